//! The plugin's side of one exchange with the daemon (see [`protocol`]):
//! connect to its Unix socket, check that the peer is root like us, send
//! the request with the namespace descriptor, read the answer. Every step
//! is bounded by one deadline, so a daemon that hangs costs a pod at most
//! [`protocol::EXCHANGE_TIMEOUT`], and a message is never read past
//! [`protocol::MAX_MESSAGE`].
//!
//! Blocking, on the plugin's only thread: the plugin is a short-lived
//! process that does nothing else meanwhile.

use std::{
    io::{self, IoSlice, Read as _, Write as _},
    os::{
        fd::{AsRawFd, BorrowedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::sys::socket::{
    ControlMessage, MsgFlags, UnixAddr, getsockopt, sendmsg, sockopt::PeerCredentials,
};
use socket2::{Domain, SockAddr, Socket, Type};

use super::protocol::{self, Request, Response};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("connecting to the daemon at {path}: {error}")]
    Connect { path: PathBuf, error: io::Error },
    #[error("the daemon at {path} is no daemon of ours: its peer runs as uid {uid}, not {me}")]
    Peer { path: PathBuf, uid: u32, me: u32 },
    #[error("talking to the daemon at {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("the daemon at {path} did not answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("the daemon at {path} answered nonsense: {reason}")]
    Answer { path: PathBuf, reason: String },
}

/// Sends `request` (with `netns`, if any, as `SCM_RIGHTS`) to the daemon
/// listening at `path` and returns its answer, all within `timeout`.
pub(crate) fn exchange(
    path: &Path,
    request: &Request,
    netns: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let io_err = |error: io::Error| {
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout {
                path: path.into(),
                timeout,
            }
        } else {
            ClientError::Io {
                path: path.into(),
                error,
            }
        }
    };
    let stream = connect(path, remaining(deadline)).map_err(|error| match error.kind() {
        io::ErrorKind::TimedOut => ClientError::Timeout {
            path: path.into(),
            timeout,
        },
        _ => ClientError::Connect {
            path: path.into(),
            error,
        },
    })?;
    // The namespace goes only to a daemon running as we do (root): a
    // socket left by someone else at that path gets nothing.
    let creds = getsockopt(&stream, PeerCredentials).map_err(|e| io_err(e.into()))?;
    let me = nix::unistd::geteuid().as_raw();
    if creds.uid() != me {
        return Err(ClientError::Peer {
            path: path.into(),
            uid: creds.uid(),
            me,
        });
    }

    let mut line = serde_json::to_vec(request).expect("a request serializes");
    line.push(b'\n');
    stream
        .set_write_timeout(Some(remaining(deadline)))
        .map_err(io_err)?;
    let fds: Vec<i32> = netns.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &[IoSlice::new(&line)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| io_err(e.into()))?;
    // The descriptor went with the first byte; the rest is plain data.
    (&stream).write_all(&line[sent..]).map_err(io_err)?;

    let answer = read_line(&stream, deadline).map_err(io_err)?;
    let answer = std::str::from_utf8(&answer).map_err(|_| ClientError::Answer {
        path: path.into(),
        reason: "not UTF-8".into(),
    })?;
    serde_json::from_str(answer.trim_end()).map_err(|e| ClientError::Answer {
        path: path.into(),
        reason: format!("{answer:?}: {e}"),
    })
}

/// At least a millisecond: a zero timeout means "none" to the socket calls.
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// A blocking stream connected to `path` within `timeout`. A listener
/// whose backlog is full refuses at once (`EAGAIN`) instead of blocking.
fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
    socket.connect_timeout(&SockAddr::unix(path)?, timeout)?;
    socket.set_nonblocking(false)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)))
}

/// One line (without the limit's worth of bytes, and ended by `\n` or the
/// end of the stream), read by `deadline`.
fn read_line(mut stream: &UnixStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if Instant::now() >= deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(remaining(deadline)))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            if line.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection without an answer",
                ));
            }
            return Ok(line);
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            line.truncate(end);
            return Ok(line);
        }
        if line.len() > protocol::MAX_MESSAGE {
            return Err(io::Error::other(format!(
                "an answer longer than {} bytes",
                protocol::MAX_MESSAGE
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader},
        os::unix::net::UnixListener,
        thread,
    };

    use super::*;
    use crate::cni::protocol::{Op, Outcome};

    fn request() -> Request {
        Request {
            op: Op::Del,
            container_id: "c1".into(),
            netns: String::new(),
            pod_namespace: None,
            pod_name: None,
        }
    }

    /// A listener at a fresh path, and a thread that runs `serve` on its
    /// first connection.
    fn server(
        serve: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve(stream);
        });
        (dir, path, handle)
    }

    /// Reads the request, so closing does not reset the connection.
    fn read_request(stream: &UnixStream) {
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
    }

    #[test]
    fn an_answer_comes_back() {
        let (_dir, path, handle) = server(|stream| {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let got: Request = serde_json::from_str(&line).unwrap();
            assert_eq!(got.container_id, "c1");
            (&stream)
                .write_all(b"{\"outcome\":\"released\",\"detail\":\"ok\"}\n")
                .unwrap();
        });
        let answer = exchange(&path, &request(), None, Duration::from_secs(5)).unwrap();
        assert_eq!(answer.outcome, Outcome::Released);
        handle.join().unwrap();
    }

    #[test]
    fn a_daemon_that_never_answers_costs_the_timeout_only() {
        let (_dir, path, handle) = server(|stream| {
            thread::sleep(Duration::from_millis(600));
            drop(stream);
        });
        let start = Instant::now();
        let err = exchange(&path, &request(), None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_millis(500));
        handle.join().unwrap();
    }

    #[test]
    fn nonsense_and_silence_are_errors() {
        let (_dir, path, handle) = server(|stream| {
            read_request(&stream);
            (&stream).write_all(b"hello\n").unwrap();
        });
        let err = exchange(&path, &request(), None, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("answered nonsense"), "{err}");
        handle.join().unwrap();

        let (_dir, path, handle) = server(|stream| read_request(&stream));
        let err = exchange(&path, &request(), None, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("without an answer"), "{err}");
        handle.join().unwrap();

        let (_dir, path, handle) = server(|stream| {
            read_request(&stream);
            let long = vec![b'x'; protocol::MAX_MESSAGE + 10];
            let _ = (&stream).write_all(&long);
        });
        let err = exchange(&path, &request(), None, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        handle.join().unwrap();
    }

    #[test]
    fn no_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let err = exchange(&path, &request(), None, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }
}
