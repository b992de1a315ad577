//! The layers around the gateway (`server::gateway_stack`) against a fake upstream: calls past
//! `limits.max_concurrent_calls` are shed at once, a call past its `grpc-timeout` is cut, and
//! the metrics layer counts what the layers answered as well as what the phases did. The fake
//! upstream holds every `PollActivityTaskQueue` for 2 s.

mod support;

use std::time::{Duration, Instant};

use support::*;

async fn setup() -> (SigningKey, Jwks, Upstream) {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    (key, jwks, upstream)
}

fn poll() -> Vec<u8> {
    [field(1, b"payments"), field(2, &field(1, b"deploys"))].concat()
}

#[tokio::test]
async fn calls_past_the_concurrency_limit_are_shed_at_once_and_counted() {
    let (key, jwks, upstream) = setup().await;
    let mut setup = Setup::new(&upstream);
    setup.limits_extra = "max_concurrent_calls = 2".into();
    let gateway = Gateway::start(&jwks, setup).await;
    let auth = format!("Bearer {}", key.sign(&claims("w", &["workers"])));
    let path = format!("{WS}/PollActivityTaskQueue");

    // Two long polls take both slots.
    let mut polls = Vec::new();
    for _ in 0..2 {
        let (addr, auth, path) = (gateway.addr, auth.clone(), path.clone());
        polls.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            client
                .call(&path, &[("authorization", auth.as_str()), ("grpc-timeout", "70S")], frame(&poll(), false))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A third call is refused at once, before it is authenticated or read.
    let mut client = Client::connect(gateway.addr).await;
    let started = Instant::now();
    let reply = client.call(&path, &[("authorization", "Bearer not-even-a-token")], frame(&poll(), false)).await;
    assert_eq!(reply.code(), "8", "{reply:?}");
    assert!(reply.message.as_deref().unwrap().contains("limits.max_concurrent_calls"), "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "shed, not queued: {:?}", started.elapsed());
    let shed =
        r#"flowgate_calls_total{method="PollActivityTaskQueue",decision="deny",grpc_status="8",namespace="other"}"#;
    assert_eq!(gateway.metric(shed).await, 1.0);

    // The polls were not disturbed, and once they are done the slots are free again.
    for poll in polls {
        assert_eq!(poll.await.unwrap().code(), "0");
    }
    let reply =
        client.unary("DescribeNamespace", Some(&key.sign(&claims("d", &["deployers"]))), &field(1, b"payments")).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    let forwarded =
        r#"flowgate_calls_total{method="PollActivityTaskQueue",decision="allow",grpc_status="0",namespace="other"}"#;
    assert_eq!(gateway.metric(forwarded).await, 2.0);
    assert_eq!(upstream.calls().iter().filter(|c| c.path.ends_with("/PollActivityTaskQueue")).count(), 2);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_call_past_its_grpc_timeout_is_cut_by_the_gateway() {
    let (key, jwks, upstream) = setup().await;
    let gateway = Gateway::start(&jwks, Setup::new(&upstream)).await;
    let auth = format!("Bearer {}", key.sign(&claims("w", &["workers"])));
    let mut client = Client::connect(gateway.addr).await;
    let started = Instant::now();
    let reply = client
        .call(
            &format!("{WS}/PollActivityTaskQueue"),
            &[("authorization", auth.as_str()), ("grpc-timeout", "200m")],
            frame(&poll(), false),
        )
        .await;
    // The upstream would answer after 2 s; the call's deadline and the 1 s of grace end first.
    assert_eq!(reply.code(), "4", "{reply:?}");
    assert!(reply.message.as_deref().unwrap().contains("deadline exceeded"), "{reply:?}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1100) && elapsed < Duration::from_millis(1900), "{elapsed:?}");
    // It was allowed, and recorded before it went upstream: it counts as allowed, cut.
    let cut =
        r#"flowgate_calls_total{method="PollActivityTaskQueue",decision="allow",grpc_status="4",namespace="other"}"#;
    assert_eq!(gateway.metric(cut).await, 1.0);
    assert!(gateway.records().iter().any(|r| r["action"] == "PollActivityTaskQueue" && r["decision"] == "allow"));
    gateway.stop().await.unwrap();
}
