//! The web dashboard at the apex domain: three files built into the binary (no separate
//! server, no CDN, works offline), a page that writes, runs and watches apps through the API
//! the gateway serves on the same origin.

use crate::pages;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Only this origin's own files and API; no inline scripts.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The file served at `path`, with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/assets/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/assets/style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
        _ => None,
    }
}

/// Answers a request for the apex domain outside `/v1/`: a dashboard file, or 404.
pub async fn respond(session: &mut pingora::proxy::Session) -> pingora::Result<bool> {
    let path = session.req_header().uri.path().to_owned();
    let headers: [(&'static str, &str); 3] = [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ];
    match asset(&path) {
        Some((content_type, body)) => pages::respond_with(session, 200, content_type, &headers, body).await?,
        None => pages::respond(session, 404, "text/html; charset=utf-8", pages::apex()).await?,
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_and_its_files_are_small_and_self_contained() {
        let (_, html) = super::asset("/").unwrap();
        assert!(html.contains("/assets/app.js") && html.contains("/assets/style.css"));
        assert!(!html.contains("http://") && !html.contains("https://"), "no outside origin");
        let total: usize =
            ["/", "/assets/app.js", "/assets/style.css"].iter().map(|p| super::asset(p).unwrap().1.len()).sum();
        assert!(total < 64 * 1024, "first load is {total} bytes");
        assert!(super::asset("/etc/passwd").is_none());
    }
}
