//! MLLP over TLS and mutual TLS: certificates made by openssl, the client is Python's ssl
//! module (OpenSSL), both written by others.

use crate::support::*;
use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all P-256.
pub(crate) fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=adt-router test CA",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        openssl(
            dir,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={who}"),
                ],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// Sends one framed message with Python's ssl client; returns what it printed.
fn python_send(dir: &Path, addr: &str, client_cert: bool) -> (bool, String) {
    python_send_as(dir, addr, client_cert, "GENHOSP", "TLS-1")
}

/// [`python_send`] with the message's MSH-4 and control id.
fn python_send_as(
    dir: &Path,
    addr: &str,
    client_cert: bool,
    facility: &str,
    control_id: &str,
) -> (bool, String) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = r#"
import socket, ssl, sys
host, port, cert, fac, cid = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile="ca.pem")
if cert:
    ctx.load_cert_chain("client.pem", "client.key")
msg = ("MSH|^~\\&|EPIC|" + fac + "|R|R|2026||ADT^A04|" + cid + "|P|2.5.1\rPID|1||M1^^^GENHOSP^MR\rPV1|1|E\r").encode()
with socket.create_connection((host, port), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(b"\x0b" + msg + b"\x1c\r")
        buf = b""
        while not buf.endswith(b"\x1c\r"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        print(buf.decode().replace("\r", "\n"))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            host,
            port,
            if client_cert { "1" } else { "0" },
            facility,
            control_id,
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn mllp_over_mutual_tls_accepts_certified_clients_only() {
    let dir = tempdir();
    make_pki(dir.path());
    let d = dir.path().display();
    let (cert, key, ca) = (
        format!("{d}/server.pem"),
        format!("{d}/server.key"),
        format!("{d}/ca.pem"),
    );
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__MLLP__TLS_CERT", &cert),
            ("ADT_ROUTER__MLLP__TLS_KEY", &key),
            ("ADT_ROUTER__MLLP__TLS_CLIENT_CA", &ca),
        ],
    );
    assert!(
        server.log().contains("tls=true")
            || std::fs::read_to_string(dir.path().join("server.log")).is_ok()
    );

    let (ok, out) = python_send(dir.path(), &server.mllp, true);
    assert!(ok && out.contains("MSA|AA|TLS-1"), "{out}");

    // No client certificate: the handshake fails and nothing is stored for it.
    let (_, out) = python_send(dir.path(), &server.mllp, false);
    assert!(!out.contains("MSA|"), "{out}");
    // Plain MLLP to the TLS port gets no answer either.
    let mut s = std::net::TcpStream::connect(&server.mllp).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    std::io::Write::write_all(
        &mut s,
        b"\x0bMSH|^~\\&|A|F|R|R|2026||ADT^A04|PLAIN-1|P|2.5\rPID|1||X\r\x1c\r",
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("MSA|"));

    wait_for(
        std::time::Duration::from_secs(20),
        "handshake failures to be counted",
        || server.metric("adt_router_mllp_frame_errors_total{kind=\"tls_handshake\"}") >= 2.0,
    );
    let ids: Vec<String> = server
        .export(&[])
        .iter()
        .map(|r| r["control_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["TLS-1"]);
}

#[test]
fn mllp_over_tls_without_client_certificates() {
    let dir = tempdir();
    make_pki(dir.path());
    let d = dir.path().display();
    let (cert, key) = (format!("{d}/server.pem"), format!("{d}/server.key"));
    let server = Server::start(
        dir.path(),
        &[
            ("ADT_ROUTER__MLLP__TLS_CERT", &cert),
            ("ADT_ROUTER__MLLP__TLS_KEY", &key),
        ],
    );
    let (ok, out) = python_send(dir.path(), &server.mllp, false);
    assert!(ok && out.contains("MSA|AA|TLS-1"), "{out}");
    // A missing key file is a clear start-up error.
    let out = Command::new(BIN)
        .arg("serve")
        .env("ADT_ROUTER__MLLP__LISTEN", "127.0.0.1:0")
        .env("ADT_ROUTER__HTTP__LISTEN", "127.0.0.1:0")
        .env("ADT_ROUTER__MLLP__TLS_CERT", &cert)
        .env("ADT_ROUTER__MLLP__TLS_KEY", "/nonexistent/key.pem")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/key.pem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With `mllp.tls_senders`, a client certificate sends only for the facilities it maps
/// to: the certified client's own MSH-4 is accepted; another facility is answered AR
/// with ERR at MSH-4 and quarantined, never stored or routed.
#[test]
fn a_client_certificate_sends_only_for_its_own_facilities() {
    let dir = tempdir();
    make_pki(dir.path());
    let d = dir.path().display();
    let config = dir.path().join("senders.toml");
    std::fs::write(
        &config,
        format!(
            "[mllp]\ntls_cert = \"{d}/server.pem\"\ntls_key = \"{d}/server.key\"\ntls_client_ca = \"{d}/ca.pem\"\n\n\
             [[mllp.tls_senders]]\nidentity = \"CN=client\"\nfacilities = [\"GENHOSP\"]\n"
        ),
    )
    .unwrap();
    let server = Server::start(
        dir.path(),
        &[("ADT_ROUTER_CONFIG", config.to_str().unwrap())],
    );
    let (ok, out) = python_send_as(dir.path(), &server.mllp, true, "GENHOSP", "MAP-1");
    assert!(ok && out.contains("MSA|AA|MAP-1"), "{out}");
    let (ok, out) = python_send_as(dir.path(), &server.mllp, true, "OTHERHOSP", "MAP-2");
    assert!(ok && out.contains("MSA|AR|MAP-2"), "{out}");
    assert!(
        out.contains("ERR|") && out.contains("MSH^1^4") && out.contains("CN=client"),
        "{out}"
    );
    let ids: Vec<String> = server
        .export(&[])
        .iter()
        .map(|r| r["control_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        vec!["MAP-1"],
        "the other facility's message is not stored"
    );
    assert_eq!(
        server.metric("adt_router_quarantined_total{reason=\"facility_not_allowed\"}"),
        1.0
    );
}
