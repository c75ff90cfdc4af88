//! Leases over raw HTTP/1.1 (discovery, create races, stale updates, get
//! after update, delete, watch, permissions) and the per-client proxy.

use super::*;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";

/// One request with `Connection: close`; the status and the JSON body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn lease(name: &str, holder: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 0},
    })
}

#[tokio::test]
async fn discovery_names_the_coordination_group() {
    let server = KubeApiServer::start().await.unwrap();
    let (code, group) = request(server.addr(), "GET", "/apis/coordination.k8s.io", None).await;
    assert_eq!(
        (code, group["preferredVersion"]["groupVersion"].as_str()),
        (200, Some("coordination.k8s.io/v1"))
    );
    let (code, list) = request(server.addr(), "GET", "/apis/coordination.k8s.io/v1", None).await;
    assert_eq!(code, 200);
    let leases = &list["resources"][0];
    assert_eq!(
        (leases["name"].as_str(), leases["kind"].as_str()),
        (Some("leases"), Some("Lease"))
    );
    let verbs = leases["verbs"].as_array().unwrap();
    for verb in ["create", "update", "delete", "get", "list", "watch"] {
        assert!(verbs.contains(&json!(verb)), "{verb}");
    }
    assert!(!verbs.contains(&json!("patch")), "patch is not served");
}

#[tokio::test]
async fn concurrent_creates_have_one_winner() {
    let server = KubeApiServer::start().await.unwrap();
    let addr = server.addr();
    let racers: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(async move {
                let holder = format!("r{i}");
                let (code, body) = request(addr, "POST", LEASES, Some(&lease("l", &holder))).await;
                (holder, code, body)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        let (holder, code, body) = racer.await.unwrap();
        match code {
            201 => winners.push(holder),
            409 => assert_eq!(body["reason"], "AlreadyExists"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = server.lease("ns", "l").unwrap();
    assert_eq!(
        stored.spec.unwrap().holder_identity.as_ref(),
        Some(&winners[0])
    );
    assert_eq!(server.request_count(Resource::Leases, Verb::Create), 8);
}

#[tokio::test]
async fn stale_updates_conflict_and_gets_see_the_update() {
    let server = KubeApiServer::start().await.unwrap();
    let addr = server.addr();
    let (code, created) = request(addr, "POST", LEASES, Some(&lease("l", "a"))).await;
    assert_eq!(code, 201);
    let path = format!("{LEASES}/l");
    let (code, got) = request(addr, "GET", &path, None).await;
    assert_eq!((code, &got), (200, &created));

    // Two writers from the same version: exactly one wins.
    let mut first = got.clone();
    first["spec"]["holderIdentity"] = json!("b");
    let mut second = got.clone();
    second["spec"]["holderIdentity"] = json!("c");
    let (code_b, updated) = request(addr, "PUT", &path, Some(&first)).await;
    let (code_c, conflict) = request(addr, "PUT", &path, Some(&second)).await;
    assert_eq!((code_b, code_c), (200, 409));
    assert_eq!(
        (
            conflict["kind"].as_str(),
            conflict["status"].as_str(),
            conflict["reason"].as_str(),
            conflict["code"].as_i64()
        ),
        (Some("Status"), Some("Failure"), Some("Conflict"), Some(409))
    );
    assert_eq!(
        conflict["message"],
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"l\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(
        conflict["details"],
        json!({"name": "l", "group": "coordination.k8s.io", "kind": "leases"})
    );

    // A get after the update sees it, with the new version.
    let (_, got) = request(addr, "GET", &path, None).await;
    assert_eq!(got["spec"]["holderIdentity"], "b");
    assert_eq!(
        got["metadata"]["resourceVersion"],
        updated["metadata"]["resourceVersion"]
    );
    assert_ne!(
        got["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    // Retrying from the fresh version works.
    second["metadata"]["resourceVersion"] = got["metadata"]["resourceVersion"].clone();
    assert_eq!(request(addr, "PUT", &path, Some(&second)).await.0, 200);
    let (_, list) = request(addr, "GET", LEASES, None).await;
    assert_eq!(list["kind"], "LeaseList");
    assert_eq!(list["items"][0]["spec"]["holderIdentity"], "c");
    let verbs: Vec<_> = server
        .requests()
        .iter()
        .filter(|r| r.resource == Some(Resource::Leases))
        .map(|r| (r.method.clone(), r.verb, r.status))
        .collect();
    assert_eq!(
        verbs,
        [
            ("POST".to_owned(), Some(Verb::Create), 201),
            ("GET".to_owned(), Some(Verb::Get), 200),
            ("PUT".to_owned(), Some(Verb::Update), 200),
            ("PUT".to_owned(), Some(Verb::Update), 409),
            ("GET".to_owned(), Some(Verb::Get), 200),
            ("PUT".to_owned(), Some(Verb::Update), 200),
            ("GET".to_owned(), Some(Verb::List), 200),
        ]
    );
}

#[tokio::test]
async fn delete_watch_and_permissions() {
    let server = KubeApiServer::start_with(Duration::from_secs(60))
        .await
        .unwrap();
    let addr = server.addr();
    let rv = server.resource_version();
    let watch_path = format!("{LEASES}?watch=true&resourceVersion={rv}&timeoutSeconds=1");
    let watcher = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {watch_path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    });
    server.forbid(Resource::Leases, Verb::Create);
    let (code, status) = request(addr, "POST", LEASES, Some(&lease("l", "a"))).await;
    assert_eq!(code, 403);
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("cannot create resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"ns\""));
    server.allow(Resource::Leases, Verb::Create);
    let (_, created) = request(addr, "POST", LEASES, Some(&lease("l", "a"))).await;
    let path = format!("{LEASES}/l");
    assert_eq!(request(addr, "PATCH", &path, Some(&json!({}))).await.0, 405);
    let (code, deleted) = request(
        addr,
        "DELETE",
        &path,
        Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1"})),
    )
    .await;
    assert_eq!((code, deleted["status"].as_str()), (200, Some("Success")));
    assert_eq!(deleted["details"]["uid"], created["metadata"]["uid"]);
    assert_eq!(request(addr, "GET", &path, None).await.0, 404);
    assert_eq!(request(addr, "DELETE", &path, None).await.0, 404);
    assert!(server.lease("ns", "l").is_none());
    let events = watcher.await.unwrap();
    let added = events.find("\"type\":\"ADDED\"").expect("ADDED event");
    let gone = events.find("\"type\":\"DELETED\"").expect("DELETED event");
    assert!(added < gone, "{events}");
}

#[tokio::test]
async fn a_cut_proxy_stalls_only_its_client() {
    let server = KubeApiServer::start().await.unwrap();
    let mut stored = lease("l", "a");
    stored["metadata"]["namespace"] = json!("ns");
    server.upsert_lease(&serde_json::from_value(stored).unwrap());
    let proxy = ApiProxy::start(server.addr()).await.unwrap();
    let path = format!("{LEASES}/l");
    let (code, _) = request(proxy.addr(), "GET", &path, None).await;
    assert_eq!(code, 200, "forwarded");

    // A connection opened before the cut stalls once the cut begins.
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.cut();
    assert!(proxy.is_cut());
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    open.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), open.read(&mut buf))
            .await
            .is_err(),
        "no answer on a held connection"
    );
    let stalled = tokio::time::timeout(
        Duration::from_millis(500),
        request(proxy.addr(), "GET", &path, None),
    )
    .await;
    assert!(stalled.is_err(), "new connections are not answered either");
    assert_eq!(
        request(server.addr(), "GET", &path, None).await.0,
        200,
        "others still reach the server"
    );

    proxy.restore();
    let n = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .expect("held connection closed at restore")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert_eq!(request(proxy.addr(), "GET", &path, None).await.0, 200);
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    proxy.write_kubeconfig(kubeconfig.path()).unwrap();
    let text = std::fs::read_to_string(kubeconfig.path()).unwrap();
    assert!(
        text.contains(&format!("    server: {}\n", proxy.url())),
        "{text}"
    );
}
