use chat_client::ErrorCode;
use chat_gateway::auth::TokenAuthority;
use chat_tests::*;

async fn refused_with(gw: &TestGateway, token: &str) -> (ErrorCode, String) {
    match gw.connect_with_token(token).await {
        Ok(client) => panic!("connected as {} with a bad token", client.user()),
        Err(chat_client::ClientError::Refused { code, reason }) => (code, reason),
        Err(other) => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_forged_malformed_and_expired_tokens_are_refused_and_others_keep_working() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &[]).await.unwrap();

    let (code, reason) = refused_with(&gw, "").await;
    assert_eq!(code, ErrorCode::MISSING_TOKEN);
    assert!(reason.contains("no token"), "{reason}");

    let forged = TokenAuthority::new(b"someone else's secret")
        .mint("alice", 3600)
        .unwrap();
    assert_eq!(refused_with(&gw, &forged).await.0, ErrorCode::INVALID_TOKEN);

    assert_eq!(
        refused_with(&gw, "garbage").await.0,
        ErrorCode::INVALID_TOKEN
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = TokenAuthority::new(SECRET.as_bytes())
        .mint_expiring_at("alice", now - 60)
        .unwrap();
    let (code, reason) = refused_with(&gw, &expired).await;
    assert_eq!(code, ErrorCode::TOKEN_EXPIRED);
    assert!(reason.contains("expired"), "{reason}");

    // The gateway kept serving the authenticated client all along.
    assert_eq!(alice.send("g", "still here").await.unwrap().seq, 1);
    assert_eq!(gw.connect("alice").await.user(), "alice");
}
