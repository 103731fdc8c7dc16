//! [`LocalServer`]: a throwaway `redis-server` for tests and benchmarks.

/// A throwaway `redis-server` for tests and benchmarks: no persistence, listening on a
/// Unix socket in a directory of its own (no port to collide on), stopped when dropped.
/// It needs Debian's `redis-server` on the `PATH` (`scripts/test` installs it).
pub struct LocalServer {
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// The URL to give [`RedisConfig::new`].
    pub url: String,
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
        let child = Self::spawn(&dir, &socket)?;
        Ok(LocalServer {
            child,
            url: format!("redis+unix://{}", socket.display()),
            dir,
        })
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
        self.child = Self::spawn(&self.dir, &socket)?;
        Ok(())
    }

    fn spawn(
        dir: &std::path::Path,
        socket: &std::path::Path,
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
                Some(Ok(line)) if line.contains("ready to accept connections") => break,
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
