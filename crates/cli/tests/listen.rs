//! `unbroken listen` as a user runs it: the real binary against a real TCP server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test's panic is its failure report

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;

/// Serves `replies` in order, one per connection (the last one repeats), recording the
/// `Last-Event-ID` of each request. Returns the URL.
fn serve(replies: Vec<&'static str>, seen: Arc<Mutex<Vec<Option<String>>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    thread::spawn(move || {
        for (n, socket) in listener.incoming().enumerate() {
            let Ok(mut socket) = socket else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let last_id = head.lines().find_map(|l| {
                l.strip_prefix("last-event-id:")
                    .map(|v| v.trim().to_owned())
            });
            seen.lock().unwrap().push(last_id);
            let reply = replies[n.min(replies.len() - 1)];
            let _ = socket.write_all(reply.as_bytes());
        }
    });
    url
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

fn listen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unbroken"))
        .arg("listen")
        .args(args)
        .output()
        .unwrap()
}

fn sse(body: &str) -> &'static str {
    Box::leak(format!("{SSE_HEAD}{body}").into_boxed_str())
}

#[test]
fn json_lines_carry_id_event_data_and_retry() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = serve(
        vec![sse(
            "retry: 1500\nid: 1\ndata: a\n\nevent: tok\ndata: b\ndata: c\n\n",
        )],
        seen.clone(),
    );
    let out = listen(&[&url, "--json", "--max-retries", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"retry": 1500}),
            serde_json::json!({"id": "1", "event": "message", "data": "a"}),
            serde_json::json!({"id": "1", "event": "tok", "data": "b\nc"}),
        ]
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "no retry was allowed");
}

#[test]
fn a_dropped_stream_is_resumed_with_last_event_id_until_204() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = serve(
        vec![
            sse("retry: 1\nid: 1\ndata: one\n\nid: 2\ndata: tw"),
            sse("id: 2\ndata: two\n\n"),
            "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
        ],
        seen.clone(),
    );
    let out = listen(&[
        &url,
        "--last-event-id",
        "0",
        "-H",
        "Authorization: Bearer x",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "one\ntwo\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("reconnecting in"), "{stderr}");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Some("0".to_owned()),
            Some("1".to_owned()),
            Some("2".to_owned())
        ]
    );
}

#[test]
fn wrong_content_type_is_a_permanent_failure() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = serve(
        vec!["HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\n\r\n<p>"],
        seen.clone(),
    );
    let out = listen(&[&url]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("text/event-stream"), "{stderr}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn client_errors_fail_with_the_status() {
    let url = serve(
        vec!["HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"],
        Arc::new(Mutex::new(Vec::new())),
    );
    let out = listen(&[&url]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("HTTP 404"));
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let out = listen(&["ftp://example.invalid/x"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("not supported")
    );
    let out = listen(&["http://127.0.0.1:1/", "-H", "no colon"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("Name: value")
    );
}

#[test]
fn help_lists_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_unbroken"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains("listen"));
    let out = listen(&["--help"]);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("--last-event-id")
    );
}
