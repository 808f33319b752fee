//! Files in a folder: one file per object, named after it. An upload is written beside its
//! final name and linked into place only once it is complete and exactly the signed size, so
//! a reader never sees half a file and a cut upload leaves nothing behind. An object is written
//! once: a second upload to its URL is refused, so a file cannot be swapped under a message
//! that names it.

use std::path::Path;

use anchorage_schema::attachment::is_object_name;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::BlobError;

/// The query of a folder URL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UrlQuery {
    /// When it expires, Unix seconds.
    pub expires: i64,
    /// The file's size in bytes.
    pub size: u64,
    /// Its media type.
    #[serde(rename = "type")]
    pub content_type: String,
    /// Its name (downloads).
    #[serde(default)]
    pub name: Option<String>,
    /// The signature.
    pub sig: String,
}

/// What a valid folder URL was signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The exact size of the file.
    pub size: u64,
    /// Its media type.
    pub content_type: String,
    /// The `Content-Disposition` of a download.
    pub disposition: String,
}

/// Why an upload to the folder was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body was not the size the URL was signed for.
    #[error("the file must have exactly {expected} bytes")]
    WrongSize {
        /// The signed size.
        expected: u64,
    },
    /// The body could not be read to its end.
    #[error("the upload was cut: {0}")]
    Cut(String),
    /// The object is stored already: an upload URL takes one file, once.
    #[error("this file is uploaded already")]
    Exists,
    /// The folder could not be written.
    #[error("storing the file: {0}")]
    Io(#[from] std::io::Error),
}

/// The stored size of `object`.
pub(crate) async fn size_of(dir: &Path, object: &str) -> Result<Option<u64>, BlobError> {
    if !is_object_name(object) {
        return Ok(None);
    }
    match tokio::fs::metadata(dir.join(object)).await {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BlobError::Unavailable(e.to_string())),
    }
}

/// Deletes `object` (gone already: done).
pub(crate) async fn delete(dir: &Path, object: &str) -> Result<(), BlobError> {
    if !is_object_name(object) {
        return Ok(());
    }
    match tokio::fs::remove_file(dir.join(object)).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BlobError::Unavailable(e.to_string())),
    }
}

/// Stores `body` as `object` in `dir` if it is exactly `size` bytes (reading no more than
/// that) and no upload of the object was stored before.
pub async fn store<E: std::fmt::Display>(
    dir: &Path,
    object: &str,
    size: u64,
    body: impl Stream<Item = Result<Bytes, E>>,
) -> Result<(), UploadError> {
    if !is_object_name(object) {
        return Err(UploadError::Io(std::io::Error::other("not an object name")));
    }
    tokio::fs::create_dir_all(dir).await?;
    let target = dir.join(object);
    if tokio::fs::try_exists(&target).await? {
        return Err(UploadError::Exists);
    }
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    let part = dir.join(format!(
        ".{object}.{}.part",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let written = write(&part, size, body).await;
    if let Err(err) = written {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(err);
    }
    // A link fails if the name exists: of two racing uploads, one is stored whole.
    let linked = tokio::fs::hard_link(&part, &target).await;
    let _ = tokio::fs::remove_file(&part).await;
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(UploadError::Exists),
        Err(e) => Err(e.into()),
    }
}

async fn write<E: std::fmt::Display>(
    part: &Path,
    size: u64,
    body: impl Stream<Item = Result<Bytes, E>>,
) -> Result<(), UploadError> {
    let mut file = tokio::fs::File::create(part).await?;
    let mut written = 0u64;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| UploadError::Cut(e.to_string()))?;
        written += chunk.len() as u64;
        if written > size {
            return Err(UploadError::WrongSize { expected: size });
        }
        file.write_all(&chunk).await?;
    }
    if written != size {
        return Err(UploadError::WrongSize { expected: size });
    }
    file.sync_all().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    const OBJECT: &str = "AAAAAAAAAAAAAAAAAAAAAA";

    #[tokio::test]
    async fn stores_exactly_the_signed_size_or_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        store(d, OBJECT, 5, chunks(&[b"hel", b"lo"]))
            .await
            .expect("stored");
        assert_eq!(size_of(d, OBJECT).await.expect("stat"), Some(5));
        assert_eq!(std::fs::read(d.join(OBJECT)).expect("read"), b"hello");
        // Once stored, never replaced.
        assert!(matches!(
            store(d, OBJECT, 5, chunks(&[b"world"])).await,
            Err(UploadError::Exists)
        ));
        // Too long or too short: refused, nothing stored.
        const OTHER: &str = "BBBBBBBBBBBBBBBBBBBBBB";
        assert!(matches!(
            store(d, OTHER, 5, chunks(&[b"hello", b"!"])).await,
            Err(UploadError::WrongSize { expected: 5 })
        ));
        assert!(matches!(
            store(d, OTHER, 5, chunks(&[b"hell"])).await,
            Err(UploadError::WrongSize { expected: 5 })
        ));
        let cut = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"he")),
            Err("connection reset".to_owned()),
        ]);
        assert!(matches!(
            store(d, OTHER, 5, cut).await,
            Err(UploadError::Cut(_))
        ));
        assert_eq!(size_of(d, OTHER).await.expect("stat"), None);
        assert_eq!(std::fs::read(d.join(OBJECT)).expect("read"), b"hello");
        // No part files are left behind.
        assert_eq!(std::fs::read_dir(d).expect("list").count(), 1);
        delete(d, OBJECT).await.expect("deleted");
        delete(d, OBJECT).await.expect("deleted twice");
        assert_eq!(size_of(d, OBJECT).await.expect("stat"), None);
        // Names that are not objects never reach the file system.
        assert_eq!(size_of(d, "../x").await.expect("stat"), None);
        assert!(store(d, "../x", 1, chunks(&[b"x"])).await.is_err());
    }
}
