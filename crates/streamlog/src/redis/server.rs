//! [`LocalServer`]: a throwaway `redis-server` for tests and benchmarks.

/// A throwaway `redis-server` for tests and benchmarks: no persistence, listening on a
/// Unix socket in a directory of its own (no port to collide on), stopped when dropped.
/// It needs Debian's `redis-server` on the `PATH` (`scripts/test` installs it).
pub struct LocalServer {
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// The URL to give [`RedisConfig::new`].
    pub url: String,
    /// With [`LocalServer::start_tls`]: the PEM of the authority that signed its
    /// certificate (for [`RedisConfig::ca_pem`]).
    pub ca_pem: Option<Vec<u8>>,
}

impl LocalServer {
    /// Start one and wait until it accepts connections.
    ///
    /// # Errors
    /// When `redis-server` is missing or does not start.
    pub fn start() -> std::io::Result<LocalServer> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("unbroken-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("redis.sock");
        let child = Self::spawn(&dir, &socket, &[])?;
        Ok(LocalServer {
            child,
            url: format!("redis+unix://{}", socket.display()),
            dir,
            ca_pem: None,
        })
    }

    /// Start one that also speaks TLS on a TCP port of 127.0.0.1, with a certificate for
    /// `127.0.0.1` from a throwaway authority (made with `openssl`); [`LocalServer::url`]
    /// is its `rediss://` URL.
    ///
    /// # Errors
    /// As [`LocalServer::start`], and when `openssl` fails.
    pub fn start_tls() -> std::io::Result<LocalServer> {
        let mut server = Self::start()?;
        server.kill();
        let dir = server.dir.clone();
        let openssl = |args: &[&str]| -> std::io::Result<()> {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("openssl {args:?} failed")))
            }
        };
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
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
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ])?;
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
        ])?;
        // A port free a moment ago: bound and released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let port = port.to_string();
        let socket = dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let tls = [
            "--tls-port",
            &port,
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            "no",
        ];
        server.child = Self::spawn(&dir, &socket, &tls)?;
        server.url = format!("rediss://127.0.0.1:{port}");
        server.ca_pem = Some(std::fs::read(dir.join("ca.crt"))?);
        Ok(server)
    }

    /// Kill it and start a new, empty one at the same address (a Redis restarted without
    /// persistence).
    ///
    /// # Errors
    /// As [`LocalServer::start`].
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let socket = self.dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        self.child = Self::spawn(&self.dir, &socket, &[])?;
        Ok(())
    }

    fn spawn(
        dir: &std::path::Path,
        socket: &std::path::Path,
        extra: &[&str],
    ) -> std::io::Result<std::process::Child> {
        use std::io::BufRead;
        let mut child = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir)
            .args(extra)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot run redis-server ({e}); scripts/test installs it"),
                )
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line))
                    if line
                        .to_ascii_lowercase()
                        .contains("ready to accept connections") =>
                {
                    break;
                }
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(std::io::Error::other(
                        "redis-server exited before it was ready",
                    ));
                }
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(child)
    }

    /// Stop it with SIGKILL (its data is gone: it keeps none).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
