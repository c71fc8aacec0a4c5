//! The kv machine through the replica contract: RESP bytes in, RESP bytes out.

use stator_api::app::{AppError, StateMachineFactory};
use stator_api::ids::GroupId;
use stator_kv::{encode_command, parse_reply, KvFactory, Value};

fn reply(bytes: &[u8]) -> Value {
    let (value, used) = parse_reply(bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    value
}

#[tokio::test]
async fn apply_query_snapshot_restore() {
    let mut machine = KvFactory.create(GroupId::new(1, 0));
    let set = encode_command(&["SET", "k", "hello", "PX", "1000"]);
    assert_eq!(machine.apply(1, 10, &set).await.unwrap(), b"+OK\r\n");
    assert_eq!(machine.state_bytes(), 6);

    let get = encode_command(&["GET", "k"]);
    assert_eq!(
        reply(&machine.query(20, &get).await.unwrap()),
        Value::bulk("hello")
    );
    assert!(
        reply(&machine.query(20, &set).await.unwrap()).is_error(),
        "writes are refused in query"
    );

    let snapshot = machine.snapshot().await.unwrap();
    let mut restored = KvFactory.create(GroupId::new(1, 1));
    restored.restore(&snapshot).await.unwrap();
    assert_eq!(restored.snapshot().await.unwrap(), snapshot);
    assert_eq!(
        reply(&restored.query(20, &get).await.unwrap()),
        Value::bulk("hello")
    );
    assert_eq!(
        reply(&restored.query(1011, &get).await.unwrap()),
        Value::null()
    );

    assert!(matches!(
        restored.restore(b"garbage").await,
        Err(AppError::BadSnapshot(_))
    ));
}

#[tokio::test]
async fn malformed_entries_get_error_replies_not_app_errors() {
    let mut machine = KvFactory.create(GroupId::new(1, 0));
    for garbage in [
        &b"*1\r\n$3\r\nGE"[..],
        b"*1\r\n$4\r\nPING\r\nextra",
        b"*x\r\n",
    ] {
        let answer = machine.apply(1, 0, garbage).await.unwrap();
        assert!(
            answer.starts_with(b"-ERR Protocol error"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    let inline = machine.apply(2, 0, b"SET k v\r\n").await.unwrap();
    assert_eq!(
        inline, b"+OK\r\n",
        "an inline command is a whole command too"
    );
}
