//! A tiny blocking HTTP/1.0 client for the end-to-end tests of the HTTP
//! service: one request per connection, the body read until the server
//! closes (HTTP/1.0: no chunked encoding, also for Server-Sent Events).
//! Tests and tools only: it allocates freely.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.body))
    }
}

/// The `Authorization` header value of `user` and `password`.
pub fn basic(user: &str, password: &str) -> String {
    tally_monitor::basic_authorization(user, password)
}

fn write_request(
    stream: &mut TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = body {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::other("connection closed in the header block"));
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            return Ok((status, headers));
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
}

/// `method path` with `headers` and `body`; waits at most `timeout` for
/// each read.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write_request(&mut stream, addr, method, path, headers, body)?;
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader)?;
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw)?;
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&raw).into_owned(),
    })
}

/// One Server-Sent Event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// An open `text/event-stream` answer, read event by event.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    pub status: u16,
}

impl EventStream {
    /// Opens `GET path` with `headers`. A non-200 answer is returned as
    /// `Err(Ok(reply))`.
    pub fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Result<EventStream, Reply>> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        write_request(&mut stream, addr, "GET", path, headers, None)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader)?;
        if status != 200 {
            let mut raw = Vec::new();
            reader.read_to_end(&mut raw)?;
            return Ok(Err(Reply {
                status,
                headers,
                body: String::from_utf8_lossy(&raw).into_owned(),
            }));
        }
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Ok(EventStream { reader, status }))
    }

    /// The next event (comments skipped) before `deadline`; `None` at the
    /// deadline or when the server closed the stream.
    pub fn next(&mut self, deadline: Instant) -> Option<SseEvent> {
        let mut event = SseEvent::default();
        let mut line = String::new();
        let mut any = false;
        loop {
            if Instant::now() >= deadline {
                return None;
            }
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue; // a partial line stays in `line`
                }
                Err(_) => return None,
            }
            let text = line.trim_end_matches(['\r', '\n']).to_string();
            line.clear();
            if text.is_empty() {
                if any {
                    return Some(event);
                }
                continue;
            }
            let (field, value) = text.split_once(':').unwrap_or((&text, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event.event = value.to_string(),
                "data" => event.data.push_str(value),
                "id" => event.id = Some(value.to_string()),
                _ => continue, // comment (`:`) or retry
            }
            any = true;
        }
    }
}
