//! `unbroken chat` as a user runs it, against a real `unbroken serve`, through a TCP
//! proxy that cuts the first connection mid-answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

struct Server {
    child: Child,
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(models: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unbroken.toml");
    std::fs::write(&config, models).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_unbroken"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(url) = line.strip_prefix("unbroken listening on ") {
            break url.to_owned();
        }
    };
    Server {
        child,
        url,
        _stdout: lines,
        _dir: dir,
    }
}

/// Forwards connections to `target`; the first response is cut after `cut` bytes.
fn cutting_proxy(target: String, cut: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let target = target.trim_start_matches("http://").to_owned();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let mut upstream = TcpStream::connect(&target).unwrap();
            let (mut client_in, mut upstream_out) =
                (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut upstream_out);
                let _ = upstream_out.shutdown(Shutdown::Write);
            });
            thread::spawn(move || {
                let limit = if n == 0 { cut } else { usize::MAX };
                let mut sent = 0;
                let mut buf = [0u8; 512];
                while sent < limit {
                    let Ok(read) = upstream.read(&mut buf) else {
                        break;
                    };
                    if read == 0 {
                        break;
                    }
                    let take = read.min(limit - sent);
                    if client.write_all(&buf[..take]).is_err() {
                        break;
                    }
                    sent += take;
                }
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
            });
        }
    });
    (url, connections)
}

fn stream_text(url: &str, id: &str) -> String {
    // The stored answer, read straight from the gateway in the events view.
    let mut socket = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    write!(
        socket,
        "GET /v1/streams/{id}?format=events HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    socket.read_to_string(&mut body).unwrap();
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter(|record| record["type"] == "text")
        .map(|record| record["text"].as_str().unwrap().to_owned())
        .collect()
}

fn upstream_requests(url: &str) -> String {
    let mut socket = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    write!(
        socket,
        "GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    socket.read_to_string(&mut body).unwrap();
    body.lines()
        .find(|l| l.starts_with("unbroken_upstream_requests_total"))
        .unwrap_or_default()
        .to_owned()
}

const MODELS: &str = "[[models]]\nname = \"sim\"\ntargets = [{ provider = \"simulator\", tokens = 60, interval_ms = 5 }]\n";

#[test]
fn the_answer_goes_to_stdout_and_the_stream_id_to_stderr() {
    let server = serve(MODELS);
    let out = Command::new(env!("CARGO_BIN_EXE_unbroken"))
        .args(["chat", "--url", &server.url, "Say something"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stream "))
        .expect("the stream id on stderr")
        .to_owned();
    assert!(stderr.contains("done: 60 tokens"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim_end_matches('\n'), stream_text(&server.url, &id));
}

#[test]
fn a_cut_connection_is_resumed_without_a_second_upstream_request() {
    let server = serve(MODELS);
    let (proxy, connections) = cutting_proxy(server.url.clone(), 2_000);
    let out = Command::new(env!("CARGO_BIN_EXE_unbroken"))
        .args(["chat", "--url", &proxy, "--model", "sim", "Say something"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reconnecting in"), "{stderr}");
    assert!(connections.load(Ordering::SeqCst) >= 2);
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stream "))
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim_end_matches('\n'),
        stream_text(&server.url, id),
        "whole, once"
    );
    assert!(
        upstream_requests(&server.url).ends_with(" 1"),
        "one upstream request: {}",
        upstream_requests(&server.url)
    );
}

#[test]
fn an_unknown_model_fails_with_a_clear_message() {
    let server = serve(MODELS);
    let out = Command::new(env!("CARGO_BIN_EXE_unbroken"))
        .args(["chat", "--url", &server.url, "--model", "nope", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(r#"HTTP 404: the model "nope" does not exist"#),
        "{stderr}"
    );
}

#[test]
fn a_gateway_that_wants_a_key_says_so() {
    // The hash of a key nobody holds.
    let server = serve(&format!(
        "[[auth.keys]]\nprincipal = \"p\"\nsha256 = \"{}\"\n{MODELS}",
        "0b3b7a3c7f5d7fb8e1b3f0f1b1b8a1d1c1e1f1a1b1c1d1e1f1a1b1c1d1e1f1a1"
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_unbroken"))
        .args(["chat", "--url", &server.url, "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("a valid API key is required"), "{stderr}");
    assert!(stderr.contains("--api-key-env"), "{stderr}");
}
