//! The Guestbook frontend, keeping the seed's PHP frontend's HTTP interface:
//!
//! - `GET /` — the page;
//! - `GET /guestbook.php?cmd=set&key=K&value=V` — `SET K V` on the Redis master, answers
//!   `{"message": "Updated"}`;
//! - `GET /guestbook.php?cmd=get&key=K` — `GET K` from a Redis slave, answers `{"data": "…"}`.
//!
//! Like the original, it finds Redis through `GET_HOST_FROM`: `env` reads
//! `REDIS_MASTER_SERVICE_HOST`/`REDIS_SLAVE_SERVICE_HOST` (the service variables), anything else
//! uses the DNS names `redis-master` and `redis-slave`. Standard library only (threads, a tiny
//! RESP client), so the image is the binary and its libc.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

const PAGE: &str = include_str!("index.html");

fn redis_addr(role: &str) -> String {
    let svc = format!("REDIS_{}", role.to_uppercase());
    if std::env::var("GET_HOST_FROM").as_deref() == Ok("env") {
        let host = std::env::var(format!("{svc}_SERVICE_HOST")).unwrap_or_else(|_| format!("redis-{role}"));
        let port = std::env::var(format!("{svc}_SERVICE_PORT")).unwrap_or_else(|_| "6379".into());
        format!("{host}:{port}")
    } else {
        format!("redis-{role}:6379")
    }
}

/// One RESP command; the reply as text (bulk/simple strings), `None` for a nil bulk string.
fn redis(addr: &str, args: &[&str]) -> Result<Option<String>, String> {
    let sock = addr.to_socket_addrs().map_err(|e| format!("resolving {addr}: {e}"))?.next().ok_or("no address")?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(3)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end();
    match line.as_bytes().first() {
        Some(b'+') => Ok(Some(line[1..].to_string())),
        Some(b'-') => Err(line[1..].to_string()),
        Some(b'$') => {
            let n: i64 = line[1..].parse().map_err(|_| "bad reply")?;
            if n < 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
            buf.truncate(n as usize);
            Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
        }
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() + 0 && i + 2 <= b.len() - 1 => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn guestbook(query: &str) -> (u16, String) {
    let params: Vec<(String, String)> =
        query.split('&').filter_map(|p| p.split_once('=').map(|(k, v)| (decode(k), decode(v)))).collect();
    let get = |k: &str| params.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
    let key = get("key").unwrap_or("messages");
    match get("cmd") {
        Some("set") => match redis(&redis_addr("master"), &["SET", key, get("value").unwrap_or("")]) {
            Ok(_) => (200, "{\"message\": \"Updated\"}".into()),
            Err(e) => (500, format!("{{\"error\": {}}}", json_string(&e))),
        },
        Some("get") => match redis(&redis_addr("slave"), &["GET", key]) {
            Ok(v) => (200, format!("{{\"data\": {}}}", json_string(&v.unwrap_or_default()))),
            Err(e) => (500, format!("{{\"error\": {}}}", json_string(&e))),
        },
        _ => (400, "{\"error\": \"cmd must be set or get\"}".into()),
    }
}

fn handle(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut r = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut request = String::new();
    if r.read_line(&mut request).is_err() {
        return;
    }
    // Drain the headers.
    loop {
        let mut h = String::new();
        match r.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = request.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (code, ctype, body) = match path {
        "/" | "/index.html" => (200, "text/html", PAGE.to_string()),
        "/guestbook.php" => {
            let (c, b) = guestbook(query);
            (c, "application/json", b)
        }
        "/healthz" => (200, "text/plain", "ok".into()),
        _ => (404, "text/plain", "not found".into()),
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let _ = write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "80".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("binding the frontend port");
    eprintln!("guestbook frontend on :{port} (GET_HOST_FROM={})", std::env::var("GET_HOST_FROM").unwrap_or_default());
    for s in listener.incoming().flatten() {
        std::thread::spawn(move || handle(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding_and_json() {
        assert_eq!(decode("hello+world%21"), "hello world!");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(guestbook("cmd=nope").0, 400);
    }

    #[test]
    fn redis_address_follows_get_host_from() {
        // SAFETY: tests in this module do not read the environment concurrently.
        unsafe { std::env::set_var("GET_HOST_FROM", "dns") };
        assert_eq!(redis_addr("master"), "redis-master:6379");
        unsafe {
            std::env::set_var("GET_HOST_FROM", "env");
            std::env::set_var("REDIS_SLAVE_SERVICE_HOST", "10.96.3.4");
        }
        assert_eq!(redis_addr("slave"), "10.96.3.4:6379");
    }
}
