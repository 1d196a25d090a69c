//! Pages the LB answers itself, without touching a host.

use pingora::protocols::http::ServerSession;

/// The 404 page for a name that is not a deployed app.
pub fn unknown_app(app: &str) -> String {
    let app = escape(app);
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>No app named {app}</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}\
code{{background:#f2f2f2;padding:.1rem .3rem;border-radius:3px}}</style></head><body>\
<h1>No app named <code>{app}</code></h1>\
<p>steady has no app by this name. If it is yours, deploy it with <code>steady deploy --name {app}</code>.</p>\
</body></html>\n"
    )
}

/// The apex domain's page for a path that is not the dashboard's.
pub fn apex() -> &'static str {
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>steady</title></head><body>\
<h1>steady</h1><p>This is a steady platform. Apps answer at <code>&lt;name&gt;</code> subdomains of this domain.</p>\
</body></html>\n"
}

/// The 503 page while the LB has no routing table yet (it just started).
pub fn no_table() -> &'static str {
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Starting</title></head><body>\
<h1>Starting</h1><p>This load balancer has no routing table yet. Try again in a moment.</p></body></html>\n"
}

/// The page for a request whose Host is not under any of the LB's domains.
pub fn unknown_host() -> &'static str {
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Unknown host</title></head><body>\
<h1>Unknown host</h1><p>This steady load balancer does not serve this host name.</p></body></html>\n"
}

fn escape(text: &str) -> String {
    text.chars()
        .take(100)
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// Writes a complete response from the LB itself, keeping the client connection usable.
/// (A proxy's session passes as its client session: the LB's own pages need none of the
/// proxy's response modules.)
pub async fn respond(
    session: &mut ServerSession,
    status: u16,
    content_type: &str,
    body: impl Into<bytes::Bytes>,
) -> pingora::Result<()> {
    respond_with(session, status, content_type, &[], body).await
}

/// Like [`respond`], with extra headers.
pub async fn respond_with(
    session: &mut ServerSession,
    status: u16,
    content_type: &str,
    headers: &[(&'static str, &str)],
    body: impl Into<bytes::Bytes>,
) -> pingora::Result<()> {
    let body = body.into();
    let mut header = pingora::http::ResponseHeader::build(status, Some(3 + headers.len()))?;
    for (name, value) in headers {
        header.insert_header(*name, *value)?;
    }
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(header)).await?;
    session.write_response_body(body, true).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_escaped() {
        assert!(super::unknown_app("<script>").contains("&lt;script&gt;"));
        assert!(!super::unknown_app("<script>").contains("<script>"));
    }
}
