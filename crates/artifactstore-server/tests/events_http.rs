//! `GET /events`: pages in JSON and CBOR, and the live SSE stream.

mod common;

use std::time::Duration;

use artifactstore_client::Client;
use artifactstore_client::reqwest;
use artifactstore_core::event::ChainVerifier;
use artifactstore_core::{BlobId, jcs};
use artifactstore_store::{Store, StoreOptions};
use futures::StreamExt;

async fn put(client: &Client, n: u64) {
    let data = format!("blob number {n}").into_bytes();
    client
        .put_blob(&BlobId::of(&data).sha256_digest(), data)
        .await
        .unwrap();
}

#[tokio::test]
async fn pages_in_json_and_cbor_seq() {
    let s = common::TestServer::start().await;
    for n in 0..5 {
        put(&s.client, n).await;
    }
    let (events, next) = s.client.events_page(1, 3).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert_eq!(next, 4);
    assert_eq!(events[0]["type"], "v1.blob.stored");
    assert_eq!(events[0]["actor"], "anonymous");
    let (rest, next) = s.client.events_page(next, 100).await.unwrap();
    assert_eq!((rest.len(), next), (1, 5));
    let (none, next) = s.client.events_page(5, 100).await.unwrap();
    assert_eq!(
        (none.len(), next),
        (0, 5),
        "an empty page keeps the position"
    );

    // Each JSON event is the exact JCS of the stored event.
    let stored = s.store.events_after(0, 100).await.unwrap();
    let raw = reqwest::get(format!("{}/events?limit=2", s.client.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let first = artifactstore_core::event::Event::decode(&stored[0].bytes).unwrap();
    assert!(raw.starts_with(&format!(
        "{{\"events\":[{}",
        jcs::to_jcs(&first.to_value()).unwrap()
    )));

    // The CBOR sequence is the chained bytes themselves.
    let resp = reqwest::Client::new()
        .get(format!("{}/events", s.client.base()))
        .header("accept", "application/cbor-seq")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/cbor-seq");
    let body = resp.bytes().await.unwrap();
    let concatenated: Vec<u8> = stored.iter().flat_map(|e| e.bytes.clone()).collect();
    assert_eq!(body.to_vec(), concatenated);
    let mut chain = ChainVerifier::new();
    for e in &stored {
        chain.check(e.seq, &e.bytes, &e.hash).unwrap();
    }
    let bad = reqwest::get(format!("{}/events?after=x", s.client.base()))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// Many concurrent writers, one follower that reconnects halfway with
/// `Last-Event-ID`: every seq exactly once, in order, no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_sees_every_event_once_in_order_across_a_reconnect() {
    const WRITERS: u64 = 6;
    const EACH: u64 = 40;
    const TOTAL: u64 = WRITERS * EACH;
    let s = common::TestServer::start().await;
    // A few events exist before the follower connects: it must replay them.
    for n in 0..5 {
        put(&s.client, 10_000 + n).await;
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = s.client.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    put(&client, w * 1000 + i).await;
                }
            })
        })
        .collect();

    let mut seen = Vec::new();
    let mut stream = Box::pin(s.client.follow_events(0).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (seen.len() as u64) < TOTAL + 5 {
        if seen.len() == 100 {
            // Drop the connection and resume where we were.
            drop(stream);
            stream = Box::pin(s.client.follow_events(*seen.last().unwrap()).await.unwrap());
        }
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("follower timed out");
        let (seq, json) = next.expect("stream ended").unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["seq"].as_u64(), Some(seq));
        seen.push(seq);
    }
    for w in writers {
        w.await.unwrap();
    }
    let want: Vec<u64> = (1..=TOTAL + 5).collect();
    assert_eq!(seen, want, "every seq exactly once, in order");
    println!(
        "follower saw {} events from {WRITERS} concurrent writers across one reconnect",
        seen.len()
    );
}

/// Events appended by another engine on the same database (another process
/// in production) reach a follower through polling.
#[tokio::test]
async fn follower_sees_events_written_by_another_process() {
    let s = common::TestServer::start().await;
    let mut stream = Box::pin(s.client.follow_events(0).await.unwrap());
    let other = Store::open_embedded(s.dir.path(), None, StoreOptions::default())
        .await
        .unwrap();
    let data = b"from elsewhere".to_vec();
    let body = futures::stream::once(async move { Ok(bytes::Bytes::from(data)) }).boxed();
    other
        .put_blob(
            &[BlobId::of(b"from elsewhere").sha256_digest()],
            None,
            body,
            "other",
        )
        .await
        .unwrap();
    let (seq, json) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("polling should deliver within seconds")
        .unwrap()
        .unwrap();
    assert_eq!(seq, 1);
    assert!(json.contains("\"actor\":\"other\""));
}
