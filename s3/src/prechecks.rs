//! Requests S3 refuses before authentication, which s3s would otherwise answer differently.
//!
//! - A presigned URL whose `X-Amz-Expires` is negative or over a week (604,800 s): S3 refuses
//!   both with 403 `AuthorizationQueryParametersError`; s3s would serve the second and give
//!   the first a 400.
//! - `OPTIONS` (a CORS preflight) without `Origin`: S3 answers 400; s3s, an anonymous 403.

use http::{HeaderValue, Method, Request, Response, StatusCode};
use s3s::{S3Error, S3ErrorCode};

/// S3's longest presigned URL validity: seven days.
pub const MAX_PRESIGNED_EXPIRES: i64 = 7 * 24 * 60 * 60;

/// The error S3 gives `req` before looking further, if any.
pub fn refusal<B>(req: &Request<B>) -> Option<S3Error> {
    if req.method() == Method::OPTIONS && !req.headers().contains_key(http::header::ORIGIN) {
        let mut err = S3Error::with_message(
            S3ErrorCode::Custom("BadRequest".into()),
            "Insufficient information. Origin request header needed.",
        );
        err.set_status_code(StatusCode::BAD_REQUEST);
        return Some(err);
    }
    let query = req.uri().query()?;
    let pairs = || form_urlencoded::parse(query.as_bytes());
    if !pairs().any(|(k, _)| k == "X-Amz-Algorithm") {
        return None;
    }
    let expires = pairs().find(|(k, _)| k == "X-Amz-Expires")?.1.parse::<i64>().ok()?;
    let problem = if expires < 0 {
        "X-Amz-Expires must be non-negative"
    } else if expires > MAX_PRESIGNED_EXPIRES {
        "X-Amz-Expires must be less than a week (in seconds) that is 604800"
    } else {
        return None;
    };
    let mut err = S3Error::with_message(S3ErrorCode::Custom("AuthorizationQueryParametersError".into()), problem);
    err.set_status_code(StatusCode::FORBIDDEN);
    Some(err)
}

/// `err` as an S3 XML error response.
pub fn response(err: &S3Error) -> Response<s3s::Body> {
    let mut xml = Vec::new();
    let mut ser = s3s::xml::Serializer::new(&mut xml);
    let written = ser.decl().and_then(|()| s3s::xml::Serialize::serialize(err, &mut ser));
    let mut response = Response::new(if written.is_ok() { s3s::Body::from(xml) } else { s3s::Body::empty() });
    *response.status_mut() = err.status_code().unwrap_or(StatusCode::BAD_REQUEST);
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, origin: bool) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        if origin {
            builder = builder.header("origin", "https://example.com");
        }
        builder.body(()).unwrap()
    }

    fn code(req: &Request<()>) -> Option<(String, Option<StatusCode>)> {
        refusal(req).map(|e| (e.code().as_str().to_owned(), e.status_code()))
    }

    #[test]
    fn presigned_expiry_outside_a_week_is_403() {
        let url = |expires: &str| format!("/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={expires}");
        let forbidden = Some(("AuthorizationQueryParametersError".to_owned(), Some(StatusCode::FORBIDDEN)));
        assert_eq!(code(&request("GET", &url("604801"), false)), forbidden);
        assert_eq!(code(&request("GET", &url("-1"), false)), forbidden);
        assert_eq!(code(&request("GET", &url("604800"), false)), None);
        assert_eq!(code(&request("GET", "/b/k?X-Amz-Expires=999999999", false)), None, "not presigned");
    }

    #[test]
    fn options_needs_an_origin() {
        assert_eq!(
            code(&request("OPTIONS", "/b/k", false)),
            Some(("BadRequest".into(), Some(StatusCode::BAD_REQUEST)))
        );
        assert_eq!(code(&request("OPTIONS", "/b/k", true)), None);
        let xml = response(&refusal(&request("OPTIONS", "/b/k", false)).unwrap());
        assert_eq!(xml.status(), StatusCode::BAD_REQUEST);
    }
}
