//! S3-compatible object storage through presigned URLs (AWS Signature Version 4, query
//! parameters): clients upload and download with them directly, and the server uses the same
//! signing for the few calls of its own (`HEAD` to check an upload, `DELETE` on revoke).

use anchorage_config::S3Config;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// One S3 bucket and the key that signs for it.
#[derive(Clone)]
pub struct S3 {
    config: S3Config,
    /// `scheme://host[:port]` of the endpoint.
    origin: url::Url,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("endpoint", &self.config.endpoint)
            .field("bucket", &self.config.bucket)
            .finish_non_exhaustive()
    }
}

/// A request to sign: its method, the object, how long it stays valid, and what else it
/// fixes.
#[derive(Debug, Clone, Copy)]
pub struct Presign<'a> {
    /// `GET`, `PUT`, `HEAD` or `DELETE`.
    pub method: &'a str,
    /// The object's name (the prefix is added).
    pub object: &'a str,
    /// Seconds the URL stays valid.
    pub expires_in: u64,
    /// Signed query parameters besides the signature's own (`response-content-type`, …).
    pub query: &'a [(&'a str, &'a str)],
    /// Signed headers besides `host`: the request must carry them with these values.
    pub headers: &'a [(&'a str, &'a str)],
    /// The signing time, Unix seconds.
    pub now: i64,
}

impl S3 {
    /// The bucket of `config`.
    pub fn new(config: &S3Config) -> anyhow::Result<S3> {
        let origin = url::Url::parse(&config.endpoint)
            .map_err(|e| anyhow::anyhow!("attachments.s3.endpoint: {e}"))?;
        anyhow::ensure!(
            origin.host_str().is_some(),
            "attachments.s3.endpoint names no host"
        );
        Ok(S3 {
            config: config.clone(),
            origin,
        })
    }

    /// The host (and port, if not the scheme's) requests go to.
    fn host(&self) -> String {
        let host = self.origin.host_str().unwrap_or_default();
        let host = if self.config.path_style {
            host.to_owned()
        } else {
            format!("{}.{host}", self.config.bucket)
        };
        match self.origin.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }

    /// The object's path on the host.
    fn path(&self, object: &str) -> String {
        let key = format!("{}{object}", self.config.prefix);
        let key = encode(&key, false);
        let base = self.origin.path().trim_end_matches('/');
        if self.config.path_style {
            format!("{base}/{}/{key}", encode(&self.config.bucket, true))
        } else {
            format!("{base}/{key}")
        }
    }

    /// A presigned URL for `p`.
    pub fn presign(&self, p: Presign<'_>) -> String {
        let c = &self.config;
        let (date, stamp) = timestamps(p.now);
        let scope = format!("{date}/{}/s3/aws4_request", c.region);
        let host = self.host();
        let mut headers: Vec<(String, String)> = p
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
            .chain([("host".to_owned(), host.clone())])
            .collect();
        headers.sort();
        let signed_headers = headers
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let credential = format!("{}/{scope}", c.access_key_id);
        let expires = p.expires_in.to_string();
        let mut query: Vec<(String, String)> = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", credential.as_str()),
            ("X-Amz-Date", stamp.as_str()),
            ("X-Amz-Expires", expires.as_str()),
            ("X-Amz-SignedHeaders", signed_headers.as_str()),
        ]
        .iter()
        .chain(p.query)
        .map(|(k, v)| (encode(k, true), encode(v, true)))
        .collect();
        query.sort();
        let query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let path = self.path(p.object);
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let canonical = format!(
            "{}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\nUNSIGNED-PAYLOAD",
            p.method
        );
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let key = [date.as_str(), c.region.as_str(), "s3", "aws4_request"]
            .iter()
            .fold(
                format!("AWS4{}", c.secret_access_key).into_bytes(),
                |k, part| hmac(&k, part.as_bytes()),
            );
        let signature = hex(&hmac(&key, to_sign.as_bytes()));
        format!(
            "{}://{host}{path}?{query}&X-Amz-Signature={signature}",
            self.origin.scheme()
        )
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(YYYYMMDD, YYYYMMDDTHHMMSSZ)` of Unix time `now`.
fn timestamps(now: i64) -> (String, String) {
    let t =
        time::OffsetDateTime::from_unix_timestamp(now).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let date = format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day());
    let stamp = format!("{date}T{:02}{:02}{:02}Z", t.hour(), t.minute(), t.second());
    (date, stamp)
}

/// URI-encodes per SigV4: everything but `A-Z a-z 0-9 - _ . ~` (and `/` in paths).
fn encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (b == b'/' && !slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws_example(path_style: bool) -> S3 {
        S3::new(&S3Config {
            endpoint: "https://s3.amazonaws.com".into(),
            region: "us-east-1".into(),
            bucket: "examplebucket".into(),
            prefix: String::new(),
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            path_style,
        })
        .expect("a bucket")
    }

    /// AWS's worked example of a presigned GET ("Authenticating Requests: Using Query
    /// Parameters", Signature Version 4).
    #[test]
    fn signs_the_aws_example() {
        let url = aws_example(false).presign(Presign {
            method: "GET",
            object: "test.txt",
            expires_in: 86400,
            query: &[],
            headers: &[],
            now: 1_369_353_600, // 2013-05-24T00:00:00Z
        });
        assert_eq!(
            url,
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn path_style_puts_the_bucket_in_the_path_and_signs_extra_headers() {
        let s3 = aws_example(true);
        let url = s3.presign(Presign {
            method: "PUT",
            object: "a b+c",
            expires_in: 60,
            query: &[("response-content-type", "image/png")],
            headers: &[("Content-Type", "image/png"), ("Content-Length", "12")],
            now: 1_369_353_600,
        });
        assert!(
            url.starts_with("https://s3.amazonaws.com/examplebucket/a%20b%2Bc?"),
            "{url}"
        );
        assert!(
            url.contains("X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost"),
            "{url}"
        );
        assert!(url.contains("response-content-type=image%2Fpng"), "{url}");
        // Anything signed changes the signature.
        let other = s3.presign(Presign {
            method: "PUT",
            object: "a b+c",
            expires_in: 60,
            query: &[("response-content-type", "image/png")],
            headers: &[("Content-Type", "image/png"), ("Content-Length", "13")],
            now: 1_369_353_600,
        });
        assert_ne!(url, other);
    }

    #[test]
    fn encodes_like_sigv4() {
        assert_eq!(encode("a/b c~d", false), "a/b%20c~d");
        assert_eq!(encode("a/b", true), "a%2Fb");
        assert_eq!(encode("é", true), "%C3%A9");
    }
}
