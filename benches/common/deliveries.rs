//! Deliveries for the benchmarks: ~1 KB Stripe-like JSON bodies, distinct events, three
//! sources. (Shared by `flush` and `startup` through `#[path]`.)

use hookscope::model::{Delivery, SignatureStatus, StoredBody};

/// The `i`-th delivery, received at `received_at_us`.
pub fn realistic(i: usize, received_at_us: i64) -> Delivery {
    let body = format!(
        "{{\"id\":\"evt_{i:024}\",\"object\":\"event\",\"type\":\"invoice.paid\",\"created\":1795000000,\"data\":{{\"object\":{{\"id\":\"in_{i}\",\"amount_paid\":{},\"customer\":\"cus_{}\",\"lines\":\"{}\"}}}}}}",
        1000 + i % 977,
        i % 5000,
        "x".repeat(800)
    );
    Delivery {
        id: hookscope::ingest::receive::new_id(received_at_us),
        received_at_us,
        source: ["stripe", "github", "shopify"][i % 3].into(),
        provider: "stripe".into(),
        event_type: Some("invoice.paid".into()),
        event_id: Some(format!("evt_{i:024}")),
        delivery_id: None,
        dedup_key: format!("stripe:evt_{i:024}"),
        provider_attempt: None,
        sent_at_us: Some(received_at_us - 150_000),
        signature_status: SignatureStatus::Valid,
        method: "POST".into(),
        path: "/webhook/stripe".into(),
        query: String::new(),
        content_type: Some("application/json".into()),
        user_agent: Some("Stripe/1.0 (+https://stripe.com/docs/webhooks)".into()),
        remote_addr: Some(format!("10.0.{}.{}:443", i % 256, i % 199)),
        headers_json: format!(
            "{{\"content-type\":\"application/json\",\"stripe-signature\":\"t=1795000000,v1={:064x}\",\"user-agent\":\"Stripe/1.0\"}}",
            i
        ),
        payload_size: body.len() as i64,
        payload_sha256: format!("{:064x}", i * 7919),
        body: StoredBody::Text(body),
        payload_issues: None,
        status_code: 200,
        upstream_status: None,
        upstream_latency_ms: None,
        upstream_error: None,
    }
}
