//! HTTP to the server under test, through ureq (blocking and free of any runtime, so
//! tokio tests can call it too).

use std::time::Duration;

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .build()
}

/// The status of a GET, or `None` when nothing answers (yet).
pub fn probe(addr: &str, path: &str) -> Option<u16> {
    match agent(Duration::from_secs(2))
        .get(&format!("http://{addr}{path}"))
        .call()
    {
        Ok(r) => Some(r.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(_) => None,
    }
}

/// GET; returns status and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_request(addr, "GET", path, &[], b"");
    (status, body)
}

/// POSTs `body` with extra header lines (`Name: value`); returns status and body.
pub fn http_post(addr: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, String) {
    let (status, _, body) = http_request(addr, "POST", path, headers, body);
    (status, body)
}

/// Any request with extra header lines (`Name: value`); returns the status, the
/// response head (`HTTP/1.1 200` and `name: value` lines) and the body.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String, String) {
    let mut req = agent(Duration::from_secs(30)).request(method, &format!("http://{addr}{path}"));
    for h in headers {
        let (name, value) = h.split_once(':').expect("a header line is Name: value");
        req = req.set(name.trim(), value.trim());
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} http://{addr}{path}: {e}"),
    };
    let status = resp.status();
    let mut head = format!("HTTP/1.1 {status}");
    for name in resp.headers_names() {
        for value in resp.all(&name) {
            head.push_str(&format!("\r\n{name}: {value}"));
        }
    }
    let body = resp.into_string().expect("a text body");
    (status, head, body)
}
