//! `/v1/blobs/<object>`: the files of the `fs` attachment backend, put and got with the
//! signed URLs `upload` and `download` issue. Like S3 with presigned URLs, the URL is the
//! authorization: it names the method, the object, the exact size and media type (and, for a
//! download, the file name) and when it expires. Files are always offered as downloads, with
//! `nosniff` and a sandboxing CSP, so nothing uploaded runs as a page of this origin.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use anchorage_blobs::fs::{UploadError, UrlQuery};
use anchorage_blobs::{BlobError, fs};

use crate::EdgeState;
use crate::api::Problem;
use crate::requests::RequestError;

fn refused(err: RequestError) -> Response {
    Problem::from(err).into_response()
}

/// The folder and the signed URL's terms, or the refusal.
fn signed(
    state: &EdgeState,
    method: &str,
    object: &str,
    query: Result<Query<UrlQuery>, QueryRejection>,
) -> Result<(std::path::PathBuf, fs::Signed), RequestError> {
    let not_here = || RequestError::NotFound("no such file".into());
    let blobs = state.blobs.as_deref().ok_or_else(not_here)?;
    let dir = blobs.fs_dir().ok_or_else(not_here)?.to_owned();
    let Query(query) = query.map_err(|_| {
        RequestError::Forbidden("a file URL carries expires, size, type and sig".into())
    })?;
    match blobs.check_fs_url(method, object, &query) {
        Ok(signed) => Ok((dir, signed)),
        Err(BlobError::BadUrl(why)) => Err(RequestError::Forbidden(why.into())),
        Err(err) => Err(RequestError::Internal(err.to_string())),
    }
}

/// `PUT /v1/blobs/{object}`: stores the file, exactly the signed size and type.
pub(crate) async fn put(
    State(state): State<EdgeState>,
    Path(object): Path<String>,
    query: Result<Query<UrlQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (dir, signed) = match signed(&state, "PUT", &object, query) {
        Ok(s) => s,
        Err(err) => return refused(err),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != signed.content_type {
        return refused(RequestError::Forbidden(format!(
            "this URL takes a file of type {}, with that Content-Type",
            signed.content_type
        )));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n != signed.size) {
        return refused(RequestError::Invalid(format!(
            "this URL takes a file of exactly {} bytes",
            signed.size
        )));
    }
    // Deleted with a revoked message: never stored again.
    match state.store.object_released(&object).await {
        Ok(false) => {}
        Ok(true) => {
            return refused(RequestError::Conflict(
                "this file was deleted with a revoked message".into(),
            ));
        }
        Err(err) => return refused(err.into()),
    }
    match fs::store(&dir, &object, signed.size, body.into_data_stream()).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(UploadError::Exists) => refused(RequestError::Conflict(
            "this file is uploaded already".into(),
        )),
        Err(err @ (UploadError::WrongSize { .. } | UploadError::Cut(_))) => {
            refused(RequestError::Invalid(err.to_string()))
        }
        Err(err) => {
            tracing::error!(error = %err, "storing an attachment");
            refused(RequestError::Internal(
                "the file could not be stored".into(),
            ))
        }
    }
}

/// `GET /v1/blobs/{object}`: the file, as a download.
pub(crate) async fn get(
    State(state): State<EdgeState>,
    Path(object): Path<String>,
    query: Result<Query<UrlQuery>, QueryRejection>,
) -> Response {
    let (dir, signed) = match signed(&state, "GET", &object, query) {
        Ok(s) => s,
        Err(err) => return refused(err),
    };
    let gone = || refused(RequestError::NotFound("the file was deleted".into()));
    let Ok(file) = tokio::fs::File::open(dir.join(&object)).await else {
        return gone();
    };
    match file.metadata().await {
        Ok(m) if m.len() == signed.size => {}
        _ => return gone(),
    }
    let header = |v: &str| HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static(""));
    (
        [
            (header::CONTENT_TYPE, header(&signed.content_type)),
            (header::CONTENT_LENGTH, header(&signed.size.to_string())),
            (header::CONTENT_DISPOSITION, header(&signed.disposition)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; sandbox"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=300"),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response()
}
