//! The listener: HTTPS with HTTP/2 chosen by ALPN (certificates made at test time with
//! `openssl`), start-up errors for bad certificate files, and the global connection cap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Events, Gateway, chat_body, http, text_of};
use gateway::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SIM: &str = r#"
[[models]]
name = "sim"
targets = [{ provider = "simulator", tokens = 40, interval_ms = 1 }]
"#;

/// A throwaway authority and a server certificate it signed for `localhost` and
/// `127.0.0.1`, with a key of the given kind.
struct Certs {
    dir: tempfile::TempDir,
    ca: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Key {
    /// PKCS#1 `RSA PRIVATE KEY`.
    Rsa,
    /// SEC1 `EC PRIVATE KEY` (P-256).
    Ecdsa,
    /// PKCS#8 `PRIVATE KEY`.
    Ed25519,
}

impl Certs {
    fn new(key: Key) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let output = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("the openssl command (scripts/test installs it)");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=unbroken test authority",
        ]);
        match key {
            Key::Rsa => openssl(&["genrsa", "-traditional", "-out", "server.key", "2048"]),
            Key::Ecdsa => openssl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "server.key",
            ]),
            Key::Ed25519 => openssl(&["genpkey", "-algorithm", "ed25519", "-out", "server.key"]),
        }
        openssl(&[
            "req",
            "-new",
            "-key",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.path().join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
        Certs { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `[server]` with this certificate and key.
    fn server_toml(&self, cert: &Path, key: &Path) -> String {
        format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    }

    /// A client that trusts only the test authority.
    fn client(&self) -> reqwest::ClientBuilder {
        let _ = http(); // installs the ring provider
        let ca = reqwest::Certificate::from_pem(&self.ca).unwrap();
        reqwest::Client::builder().tls_certs_only([ca])
    }
}

/// A gateway serving HTTPS with `certs`, and its `https://localhost:PORT` URL; `toml`
/// follows the `tls_*` lines of `[server]`.
async fn start_tls(certs: &Certs, toml: &str) -> (Gateway, String) {
    let server = certs.server_toml(&certs.path("server.crt"), &certs.path("server.key"));
    let config = common::parse(&format!("[store]\nkind = \"memory\"\n{server}{toml}"));
    let log = gateway::open_log(&config.store).unwrap();
    let gateway = Gateway::start_with(&config, AppState::new(&config, log).unwrap()).await;
    let https = gateway.url.replace("http://127.0.0.1", "https://localhost");
    (gateway, https)
}

fn port_of(url: &str) -> &str {
    url.rsplit(':').next().unwrap()
}

#[tokio::test]
async fn a_streamed_answer_over_https_with_http1() {
    let certs = Certs::new(Key::Ecdsa);
    let (gateway, https) = start_tls(&certs, SIM).await;
    let client = certs.client().http1_only().build().unwrap();
    let response = client
        .post(format!("{https}/v1/chat/completions"))
        .json(&chat_body("sim", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let events = Events::new(response).rest().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(text_of(&events).split_whitespace().count(), 40);
    drop(gateway);
}

#[tokio::test]
async fn alpn_chooses_http2_when_the_client_offers_it() {
    let certs = Certs::new(Key::Ecdsa);
    let (_gateway, https) = start_tls(&certs, SIM).await;
    // The client offers h2 and http/1.1, as browsers do.
    let client = certs.client().build().unwrap();
    let response = client.get(format!("{https}/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn several_answers_stream_at_once_on_one_http2_connection() {
    let certs = Certs::new(Key::Ecdsa);
    // One connection at most: a second one would be refused, so every answer below
    // shares the first.
    let (_gateway, https) =
        start_tls(&certs, &format!("[limits]\nmax_connections = 1\n{SIM}")).await;
    let client = certs.client().http2_prior_knowledge().build().unwrap();
    let warm = client.get(format!("{https}/health")).send().await.unwrap();
    assert_eq!(warm.version(), reqwest::Version::HTTP_2);
    let url = format!("{https}/v1/chat/completions");
    let mut streams = Vec::new();
    for _ in 0..8 {
        let response = client
            .post(&url)
            .json(&chat_body("sim", true))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        streams.push(Events::new(response));
    }
    // Every response is open (headers received) before any is read to the end.
    let answers = futures_util::future::join_all(streams.into_iter().map(Events::rest)).await;
    for events in answers {
        assert_eq!(events.last().unwrap().data, "[DONE]");
        assert_eq!(text_of(&events).split_whitespace().count(), 40);
    }
}

#[tokio::test]
async fn rsa_and_ed25519_keys_serve_too() {
    for key in [Key::Rsa, Key::Ed25519] {
        let certs = Certs::new(key);
        let (_gateway, https) = start_tls(&certs, SIM).await;
        let client = certs.client().build().unwrap();
        let response = client.get(format!("{https}/health")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn plain_http_to_the_https_port_fails() {
    let certs = Certs::new(Key::Ecdsa);
    let (_gateway, https) = start_tls(&certs, SIM).await;
    let plain = format!("http://127.0.0.1:{}/health", port_of(&https));
    assert!(http().get(plain).send().await.is_err());
}

#[tokio::test]
async fn the_shutdown_ends_http2_answers_resumably() {
    let certs = Certs::new(Key::Ecdsa);
    // No grace: the answer stops where it is and its reader is told so, to resume elsewhere.
    let (mut gateway, https) =
        start_tls(&certs, &format!("shutdown_grace_ms = 0\n{}", common::SLOW)).await;
    let client = certs.client().http2_prior_knowledge().build().unwrap();
    let response = client
        .post(format!("{https}/v1/chat/completions"))
        .json(&chat_body("slow", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let mut events = Events::new(response);
    events.next().await.unwrap();
    let ((), mut rest) = tokio::join!(gateway.shutdown(), events.rest());
    let ending = rest.pop().expect("an ending event");
    let error: serde_json::Value = serde_json::from_str(&ending.data).unwrap();
    assert_eq!(error["error"]["code"], "interrupted", "{}", ending.data);
}

/// `run` with `[server]` naming these files: its error.
async fn start_up_error(server: &str) -> String {
    let config = common::parse(&format!("[store]\nkind = \"memory\"\n{server}{SIM}"));
    let log = gateway::open_log(&config.store).unwrap();
    let state = AppState::new(&config, log).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    gateway::run(listener, state, std::future::pending())
        .await
        .expect_err("the gateway must not start")
        .to_string()
}

#[tokio::test]
async fn bad_certificate_files_stop_the_start_naming_the_key() {
    let certs = Certs::new(Key::Ecdsa);
    let other = Certs::new(Key::Ecdsa);
    let (cert, key) = (certs.path("server.crt"), certs.path("server.key"));
    let missing = certs.path("missing.pem");

    let error = start_up_error(&certs.server_toml(&missing, &key)).await;
    assert!(error.starts_with("server.tls_cert "), "{error}");
    assert!(error.contains("missing.pem"), "{error}");

    // A key where the certificate should be: no certificate in it.
    let error = start_up_error(&certs.server_toml(&key, &key)).await;
    assert!(error.starts_with("server.tls_cert "), "{error}");

    let error = start_up_error(&certs.server_toml(&cert, &cert)).await;
    assert!(error.starts_with("server.tls_key "), "{error}");

    // The key of another certificate.
    let error = start_up_error(&certs.server_toml(&cert, &other.path("server.key"))).await;
    assert!(error.starts_with("server.tls_key "), "{error}");
}

/// Send a `GET /health` on `tcp`, read its whole answer and return its head.
async fn health(tcp: &mut TcpStream) -> String {
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "closed early");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("a content-length");
    let mut body = vec![0; length.trim().parse().unwrap()];
    tcp.read_exact(&mut body).await.unwrap();
    head
}

#[tokio::test]
async fn past_max_connections_a_connection_gets_503_until_one_closes() {
    let gateway = Gateway::start(&format!("[limits]\nmax_connections = 2\n{SIM}")).await;
    let addr = gateway.url.trim_start_matches("http://").to_owned();
    // Two keep-alive connections, each served once: both are open on the gateway's side.
    let mut first = TcpStream::connect(&addr).await.unwrap();
    let mut second = TcpStream::connect(&addr).await.unwrap();
    assert!(health(&mut first).await.starts_with("HTTP/1.1 200"));
    assert!(health(&mut second).await.starts_with("HTTP/1.1 200"));

    // A third is answered at once, without sending anything, and closed.
    let mut third = TcpStream::connect(&addr).await.unwrap();
    let mut answer = Vec::new();
    third.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{head}"
    );
    let headers = head.to_ascii_lowercase();
    assert!(headers.contains("\r\nretry-after: 1\r\n"), "{head}");
    assert!(
        headers.contains("\r\ncontent-type: application/json\r\n"),
        "{head}"
    );
    assert!(headers.contains("\r\nconnection: close"), "{head}");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    assert_eq!(body["error"]["type"], "server_error");

    // A client whose request is on its way gets the same answer (what it sent is read
    // before the close, so no reset destroys the answer).
    let mut fourth = TcpStream::connect(&addr).await.unwrap();
    fourth
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = fourth.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Once one closes, its place is free again. The gateway notices the close in its own
    // time: retry while refused (a 503, or an error from a client like hyper's that
    // rejects an answer arriving before its request), each try a round trip through the
    // runtime.
    drop(first);
    let url = format!("{}/v1/chat/completions", gateway.url);
    let mut tries = 0;
    let response = loop {
        match http().post(&url).json(&chat_body("sim", true)).send().await {
            Ok(response) if response.status() != 503 => break response,
            Ok(_) | Err(_) => {}
        }
        tries += 1;
        assert!(
            tries < 10_000,
            "the closed connection's place was never freed"
        );
        tokio::task::yield_now().await;
    };
    let events = Events::new(response).rest().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    // The other connection was never disturbed.
    let again = health(&mut second).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}
