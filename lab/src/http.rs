//! The served-latency workload's client: sequential HTTP/1.1 GETs over loopback, one connection per
//! request (busybox httpd closes after each response), timed from connect to the last body byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {source} (the server in the container is not listening; its output is in the lab's work/io directory)")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr} failed: {message} (the server broke the connection; its output is in the lab's work/io directory)")]
    Exchange { addr: SocketAddr, message: String },
    #[error("{addr} answered HTTP {status} (the workload must serve /index.html from /www)")]
    Status { addr: SocketAddr, status: u16 },
    #[error("no answer from {addr} within {timeout:?} (the server is stuck or the machine overloaded; rerun with --only PROFILE)")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// One GET of `path`; its latency.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Duration, HttpError> {
    match tokio::time::timeout(timeout, get_inner(addr, path)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout { addr, timeout }),
    }
}

async fn get_inner(addr: SocketAddr, path: &str) -> Result<Duration, HttpError> {
    let exchange = |e: hyper::Error| HttpError::Exchange {
        addr,
        message: e.to_string(),
    };
    let started = Instant::now();
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HttpError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(exchange)?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| HttpError::Exchange {
            addr,
            message: e.to_string(),
        })?;
    let response = sender.send_request(request).await.map_err(exchange)?;
    let status = response.status().as_u16();
    response.into_body().collect().await.map_err(exchange)?;
    let elapsed = started.elapsed();
    driver.abort();
    if status != 200 {
        return Err(HttpError::Status { addr, status });
    }
    Ok(elapsed)
}

/// Polls `addr` with GETs until one succeeds or `deadline` passes; the last error otherwise.
pub async fn wait_ready(addr: SocketAddr, path: &str, within: Duration) -> Result<(), HttpError> {
    let deadline = Instant::now() + within;
    loop {
        match get(addr, path, Duration::from_secs(2)).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether something already listens on `port` of loopback.
pub fn port_in_use(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn times_a_request_and_rejects_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for reply in [
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
                "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            ] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await.unwrap();
                socket.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let latency = get(addr, "/", Duration::from_secs(5)).await.unwrap();
        assert!(latency > Duration::ZERO);
        let err = get(addr, "/", Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, HttpError::Status { status: 404, .. }));
    }

    #[test]
    fn a_bound_port_is_in_use() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(port_in_use(listener.local_addr().unwrap().port()));
        assert!(free_port().unwrap() > 0);
    }
}
