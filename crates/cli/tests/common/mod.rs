//! The harness of the binary's tests: real `unbroken serve` and `unbroken simulate`
//! processes on 127.0.0.1 ports picked at run time, killed when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses a part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use futures_util::StreamExt;

/// A running `unbroken serve` child process, killed when dropped.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    /// Held open so the server's later lines on stdout never meet a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Start `unbroken serve` on 127.0.0.1:0 with `config` (if any) and `store`, and wait
    /// for the line announcing its address.
    pub fn start(config: Option<&Path>, store: &str) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_unbroken"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--store", store]);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut url = String::new();
        let mut line = String::new();
        while url.is_empty() {
            line.clear();
            let read = stdout.read_line(&mut line).unwrap();
            if read == 0 {
                let _ = child.kill();
                panic!("unbroken serve exited before listening");
            }
            if let Some(addr) = line.trim().strip_prefix("unbroken listening on ") {
                url = addr.to_owned();
            }
        }
        Server {
            url,
            child,
            _stdout: stdout,
        }
    }

    /// `kill -9`: no shutdown path runs, nothing is flushed on the way out.
    pub fn kill_9(mut self) {
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

/// A running `unbroken simulate` child process, killed when dropped.
pub struct Simulator {
    /// Its OpenAI base URL, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    child: Child,
}

impl Simulator {
    /// `unbroken simulate` with `args` after the listen address.
    pub fn start(args: &[&str]) -> Simulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_unbroken"))
            .args(["simulate", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("simulator listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Simulator { url, child }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client (rustls with ring).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// An SSE response read event by event.
pub fn events(response: reqwest::Response) -> futures_util::stream::BoxStream<'static, sse::Event> {
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

/// What a reader of an OpenAI chat stream saw, to its end.
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    /// The content deltas joined.
    pub text: String,
    /// The last chunk's `finish_reason`.
    pub finish: Option<String>,
    /// Whether `[DONE]` came last.
    pub done: bool,
    /// The code of an error event, if one ended the stream.
    pub error: Option<String>,
    /// The last event's id.
    pub last_id: String,
}

impl Answer {
    /// Add one event of the stream.
    pub fn add(&mut self, event: &sse::Event) {
        assert!(!self.done, "nothing may follow [DONE]");
        self.last_id.clone_from(&event.id);
        if event.data == "[DONE]" {
            self.done = true;
            return;
        }
        let chunk: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        if let Some(code) = chunk["error"]["code"].as_str() {
            self.error = Some(code.to_owned());
            return;
        }
        if let Some(choice) = chunk["choices"].get(0) {
            if let Some(text) = choice["delta"]["content"].as_str() {
                self.text.push_str(text);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish = Some(reason.to_owned());
            }
        }
    }

    /// Read `events` to their end (bounded by `within`: a stream that never ends fails
    /// the test instead of hanging it).
    pub async fn read_to_end(
        mut self,
        events: &mut futures_util::stream::BoxStream<'static, sse::Event>,
        within: std::time::Duration,
    ) -> Answer {
        let reading = async {
            while let Some(event) = events.next().await {
                self.add(&event);
            }
            self
        };
        tokio::time::timeout(within, reading)
            .await
            .expect("the stream ends")
    }
}
