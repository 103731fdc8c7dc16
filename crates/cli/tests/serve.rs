//! `unbroken serve` as an operator runs it: the real binary, a real SQLite file, a real
//! `kill -9`. An answer a client has seen must survive the process dying under it; a
//! dangerous or mistyped start-up must be refused with a message that says why.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test's panic is its failure report

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use futures_util::StreamExt;

/// A running `unbroken serve` child process, killed when dropped.
struct Server {
    url: String,
    child: Child,
    /// Held open so the server's later lines on stdout never meet a closed pipe.
    stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Start `unbroken serve` on 127.0.0.1:0 and wait for the line announcing its address.
    fn start(config: &Path, store: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_unbroken"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--store",
                store,
                "--config",
            ])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Owned by `Server` from here on, so its Drop reaps the child on every path.
        let mut server = Server {
            url: String::new(),
            child,
            stdout,
        };
        let mut line = String::new();
        while server.url.is_empty() {
            line.clear();
            let read = server.stdout.read_line(&mut line).unwrap();
            assert!(read > 0, "unbroken serve exited before listening");
            if let Some(addr) = line.trim().strip_prefix("unbroken listening on ") {
                server.url = addr.to_owned();
            }
        }
        server
    }

    /// `kill -9`: no shutdown path runs, nothing is flushed on the way out.
    fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "the process was killed, not stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// An SSE response read event by event.
fn events(response: reqwest::Response) -> futures_util::stream::BoxStream<'static, sse::Event> {
    assert_eq!(response.status(), 200, "expected an event stream");
    sse::EventStream::new(response.bytes_stream())
        .filter_map(|frame| async move {
            match frame.unwrap() {
                sse::Frame::Event(event) => Some(event),
                sse::Frame::Retry(_) => None,
            }
        })
        .boxed()
}

fn serve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unbroken"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

const SLOW: &str = r#"
[[models]]
name = "slow"
targets = [{ provider = "simulator", tokens = 100000, interval_ms = 5 }]
"#;

#[tokio::test]
async fn what_a_client_saw_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unbroken.toml");
    std::fs::write(&config, SLOW).unwrap();
    let store = format!("sqlite:{}", dir.path().join("u.db").display());

    let server = Server::start(&config, &store);
    let response = http()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&serde_json::json!({
            "model": "slow",
            "stream": true,
            "messages": [{ "role": "user", "content": "Tell me a long story." }],
        }))
        .send()
        .await
        .unwrap();
    let stream_id = response.headers()["unbroken-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut live = events(response);
    let mut seen = Vec::new();
    for _ in 0..25 {
        let event = live.next().await.expect("the answer goes on");
        seen.push((event.id, event.data));
    }
    let first: serde_json::Value = serde_json::from_str(&seen[0].1).unwrap();
    assert_eq!(first["id"], format!("chatcmpl-{stream_id}"));

    server.kill_9();
    drop(live);

    // The same database, a new process: everything seen is there, byte for byte.
    let server = Server::start(&config, &store);
    let resumed = http()
        .get(format!("{}/v1/streams/{stream_id}", server.url))
        .send()
        .await
        .unwrap();
    // Nobody continues the stream after the restart: the reader gets everything the log
    // holds, then an `interrupted` error — never `[DONE]`, and not heartbeats forever.
    let mut replay = events(resumed);
    let mut replayed = Vec::new();
    while let Some(event) = tokio::time::timeout(std::time::Duration::from_secs(20), replay.next())
        .await
        .expect("the replay of a stream nobody writes ends")
    {
        replayed.push((event.id, event.data));
    }
    let (ending_id, ending) = replayed.pop().expect("an ending event");
    let ending: serde_json::Value = serde_json::from_str(&ending).unwrap();
    assert_eq!(ending["error"]["code"], "interrupted", "{ending}");
    assert_eq!(
        ending_id,
        replayed.last().unwrap().0,
        "the ending repeats the last id, so reconnecting from it is in range"
    );
    assert!(replayed.iter().all(|(_, data)| data != "[DONE]"));
    assert!(replayed.len() >= seen.len());
    assert_eq!(
        replayed[..seen.len()],
        seen[..],
        "same ids, same chunks, in order"
    );

    let status: serde_json::Value = http()
        .get(format!("{}/v1/streams/{stream_id}/status", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "open", "not finished: {status}");
    assert!(
        status["seq"].as_u64().unwrap() >= seen.len() as u64,
        "the log holds at least what was seen: {status}"
    );

    // Its writer's lease has not expired, but the process holding it is gone: a cancel
    // ends the stream at once, and a reader resuming from the last event sees why.
    let cancelled = http()
        .post(format!("{}/v1/streams/{stream_id}/cancel", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let cancelled: serde_json::Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let rest = http()
        .get(format!("{}/v1/streams/{stream_id}", server.url))
        .header("last-event-id", &ending_id)
        .send()
        .await
        .unwrap();
    let mut rest = events(rest);
    let last = rest.next().await.expect("the cancellation");
    let last: serde_json::Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(last["error"]["code"], "cancelled", "{last}");
    assert!(rest.next().await.is_none(), "and nothing after it");
}

#[test]
fn a_public_address_without_api_keys_is_refused() {
    let out = serve(&["--listen", "0.0.0.0:0", "--store", "memory"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "it never listened: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn an_unknown_config_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, key) in [
        ("[server]\nlisten_port = 8080\n", "listen_port"),
        (
            "[[models]]\nname = \"m\"\ntargets = [{ provider = \"simulator\", tokenz = 5 }]\n",
            "tokenz",
        ),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, toml).unwrap();
        let out = serve(&[
            "--config",
            config.to_str().unwrap(),
            "--store",
            "memory",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(!out.status.success(), "{toml} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
}
