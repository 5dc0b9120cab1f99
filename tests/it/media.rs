//! Media networking: the built-in TURN server relays, over UDP and over TCP, for a client that
//! holds credentials from the API, and refuses credentials it did not sign.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use crate::identity::{create_org, login, operator_invite_and_accept};
use crate::support::{TestServer, config_for, expect_problem};

async fn turn_client(server: &str, username: &str, password: &str) -> Client {
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client_over(Arc::new(conn), server, username, password).await
}

/// A TURN client over TCP: the same framing the server uses, from the client's side.
async fn turn_client_tcp(server: &str, username: &str, password: &str) -> Client {
    let stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let conn = outpost::media::turn::TcpFramed::new(stream).unwrap();
    client_over(Arc::new(conn), server, username, password).await
}

async fn client_over(conn: Arc<dyn Conn + Send + Sync>, server: &str, username: &str, password: &str) -> Client {
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_owned(),
        turn_serv_addr: server.to_owned(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: outpost::media::turn::REALM.to_owned(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

#[tokio::test]
async fn a_client_relays_through_the_built_in_turn_server_with_api_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.media.turn_listen = Some("127.0.0.1:0".parse().unwrap());
    // The peers in this test are on loopback, which relays refuse unless allowed.
    config.media.turn_allow_loopback_peers = true;
    let s = TestServer::start_with(config).await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, &format!("caller-{sl}@example.org"), "guest").await;
    let caller = login(&s, &sl, &format!("caller-{sl}@example.org")).await;
    let r = s.http.post(s.url("/v1/media/turn-credentials")).bearer_auth(&caller.access).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    let url = c["urls"][0].as_str().unwrap();
    let server = url.strip_prefix("turn:").and_then(|u| u.strip_suffix("?transport=udp")).unwrap().to_owned();
    assert_eq!(c["urls"][1].as_str().unwrap(), format!("turn:{server}?transport=tcp"));
    let username = c["username"].as_str().unwrap();
    assert!(username.ends_with(&format!(":{}", caller.user_id)), "{username}");
    assert_eq!(c["ttl_s"], 3600);

    // Allocate, then relay both ways between the client and a peer that only sees the relay.
    let client = turn_client(&server, username, c["credential"].as_str().unwrap()).await;
    let relay = client.allocate().await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay.send_to(b"ping", peer.local_addr().unwrap()).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..n], from.port()), (&b"ping"[..], relay_addr.port()));
    peer.send_to(b"pong", from).await.unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..n], from), (&b"pong"[..], peer.local_addr().unwrap()));
    // The allocation shows in the metrics.
    let mut seen = false;
    for _ in 0..50 {
        let m = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if m.lines().any(|l| l == "outpost_turn_allocations 1") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the allocation never showed in /metrics");
    client.close().await.unwrap();

    // The same over TCP, for networks that let no UDP out.
    let client = turn_client_tcp(&server, username, c["credential"].as_str().unwrap()).await;
    let relay = client.allocate().await.unwrap();
    relay.send_to(b"over tcp", peer.local_addr().unwrap()).await.unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"over tcp");
    peer.send_to(b"back", from).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"back");
    client.close().await.unwrap();

    // A password the server did not sign, or a username it did not give out, gets nothing.
    for (user, pass) in [(username, "not the password"), ("9999999999:someone", "anything")] {
        let intruder = turn_client(&server, user, pass).await;
        assert!(intruder.allocate().await.is_err(), "{user} was allocated");
        intruder.close().await.unwrap();
    }
    s.stop().await;
}

#[tokio::test]
async fn without_a_turn_server_credentials_are_refused_clearly() {
    let s = TestServer::start().await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, &format!("m-{sl}@example.org"), "member").await;
    let m = login(&s, &sl, &format!("m-{sl}@example.org")).await;
    let r = s.http.post(s.url("/v1/media/turn-credentials")).bearer_auth(&m.access).send().await.unwrap();
    expect_problem(r, 409, "turn_disabled").await;
    s.stop().await;
}

#[tokio::test]
async fn relays_do_not_reach_this_hosts_loopback_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.media.turn_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start_with(config).await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, &format!("m-{sl}@example.org"), "member").await;
    let m = login(&s, &sl, &format!("m-{sl}@example.org")).await;
    let c: Value = s
        .http
        .post(s.url("/v1/media/turn-credentials"))
        .bearer_auth(&m.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let server =
        c["urls"][0].as_str().unwrap().trim_start_matches("turn:").trim_end_matches("?transport=udp").to_owned();
    let client = turn_client(&server, c["username"].as_str().unwrap(), c["credential"].as_str().unwrap()).await;
    let relay = client.allocate().await.unwrap();
    // A service on this host's loopback: the relay must not become a way in.
    let service = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay.send_to(b"knock", service.local_addr().unwrap()).await.unwrap();
    let mut buf = [0u8; 64];
    let heard = tokio::time::timeout(Duration::from_millis(500), service.recv_from(&mut buf)).await;
    assert!(heard.is_err(), "a loopback service heard from the relay");
    client.close().await.unwrap();
    s.stop().await;
}
