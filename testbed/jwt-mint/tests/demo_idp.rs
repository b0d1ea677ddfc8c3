//! The demo IdP's opaque tokens and introspection endpoint, as the quickstart uses
//! them: a minted token is active with its claims for the demo client only, an unknown
//! or deleted (revoked) one is not.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn post(port: u16, auth: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /introspect HTTP/1.1\r\nhost: idp\r\nconnection: close\r\nauthorization: {auth}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let json = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(json).unwrap_or_default())
}

#[test]
fn opaque_tokens_are_introspected_for_the_demo_client_and_revoked_by_deleting_them() {
    let dir = std::env::temp_dir().join(format!("demo-idp-test-{}", std::process::id()));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Beside this test's own executable (`target/<profile>/deps`), found when it runs:
    // `env!("CARGO_BIN_EXE_demo-idp")` would keep the path of the checkout that built
    // it, and checkouts share one target directory.
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("demo-idp");
    let _idp = Serving(
        Command::new(&bin)
            .args(["serve", "--address", &format!("127.0.0.1:{port}"), "--dir"])
            .arg(&dir)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = Command::new(&bin)
        .args([
            "token", "--sub", "ada", "--tier", "premium", "--groups", "admin", "--opaque", "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        token.starts_with("opq_") && token.split('.').count() == 1,
        "{token}"
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the demo IdP did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let demo = "Basic ZGVtby1nYXRld2F5OmRlbW8tc2VjcmV0"; // demo-gateway:demo-secret
    let (status, answer) = post(
        port,
        demo,
        &format!("token={token}&token_type_hint=access_token"),
    );
    assert_eq!(status, 200);
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["sub"], "ada");
    assert_eq!(answer["tier"], "premium");
    assert_eq!(answer["groups"], serde_json::json!(["admin"]));
    assert_eq!(answer["iss"], "https://demo-idp.portcullis.local");
    // Another client: refused.
    assert_eq!(post(port, "Basic eDp5", &format!("token={token}")).0, 401);
    // Unknown, then revoked: inactive.
    assert_eq!(post(port, demo, "token=opq_nothing").1["active"], false);
    std::fs::remove_dir_all(dir.join("opaque")).unwrap();
    assert_eq!(
        post(port, demo, &format!("token={token}")).1["active"],
        false
    );
    let _ = std::fs::remove_dir_all(&dir);
}
