//! A fake app (this test, connected to the host socket by hand) sends garbage; the
//! host must answer with an [`AppError`] for that replica and never panic or allocate
//! what a lying length prefix asks for.

mod common;

use stator_api::app::{AppError, StateMachine};
use stator_sm::frame::HANDSHAKE;
use stator_sm::host::{ProcessMachine, ProcessMachineConfig};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// A machine whose "app" is `sleep`: it never connects, so the test plays the app.
fn dummy_config(label: &str) -> ProcessMachineConfig {
    let mut config = common::config(label, "sleep", &["60"]);
    config.limits.handshake_timeout = Duration::from_secs(5);
    config.limits.restart_backoff_initial = Duration::from_millis(10);
    config
}

async fn connect(socket_path: &PathBuf) -> UnixStream {
    loop {
        match UnixStream::connect(socket_path).await {
            Ok(stream) => return stream,
            // The host binds the socket on its first call; wait for it.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Reads one request frame and returns its bytes (type byte + body).
async fn read_request(stream: &mut UnixStream) -> Vec<u8> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await.unwrap();
    let mut frame = vec![0; u32::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut frame).await.unwrap();
    frame
}

/// Plays an app that greets correctly and answers the first request with `answer`.
fn fake_app(socket_path: PathBuf, answer: Vec<u8>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = connect(&socket_path).await;
        stream.write_all(HANDSHAKE).await.unwrap();
        let mut greeting = [0u8; HANDSHAKE.len()];
        stream.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, HANDSHAKE);
        read_request(&mut stream).await;
        let _ = stream.write_all(&answer).await;
        // Hold the connection open so only the bytes decide the outcome.
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
}

async fn apply_with_answer(label: &str, answer: Vec<u8>) -> (AppError, ProcessMachine) {
    let config = dummy_config(label);
    let app = fake_app(config.socket_path(), answer);
    let mut machine = ProcessMachine::new(config);
    let error = machine.apply(1, 1, b"cmd").await.unwrap_err();
    app.abort();
    (error, machine)
}

#[tokio::test]
async fn garbled_answers_stop_only_that_replica() {
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let cases: [(&str, Vec<u8>, &str); 5] = [
            ("len4g", vec![0xff, 0xff, 0xff, 0xff], "exceeds"),
            (
                "len64m",
                (64u32 * 1024 * 1024 + 1).to_be_bytes().to_vec(),
                "exceeds",
            ),
            ("len0", vec![0, 0, 0, 0], "empty frame"),
            ("type", vec![0, 0, 0, 1, 0x42], "unknown frame type 0x42"),
            ("reqtype", vec![0, 0, 0, 1, 0x01], "unknown frame type 0x01"),
        ];
        for (label, answer, expected) in cases {
            let (error, mut machine) = apply_with_answer(label, answer).await;
            let AppError::Protocol(message) = &error else {
                panic!("{label}: expected a protocol error, got {error:?}");
            };
            assert!(message.contains(expected), "{label}: {message}");
            assert_eq!(machine.restarts(), 0, "{label}: garbage is not a crash");
            assert!(machine.handle().is_stopped());
            assert!(machine.pid().is_none(), "{label}: the app was killed");
            // The machine stays stopped; the host process goes on.
            let again = machine.query(2, b"").await.unwrap_err();
            assert!(matches!(again, AppError::Unavailable(_)), "{again:?}");
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn error_frame_is_reported_with_the_apps_message() {
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let mut answer = vec![0, 0, 0, 5, 0x81];
        answer.extend_from_slice(b"boom");
        let (error, _machine) = apply_with_answer("errframe", answer).await;
        let AppError::Protocol(message) = &error else {
            panic!("expected a protocol error, got {error:?}");
        };
        assert!(message.contains("APPLY index 1: boom"), "{message}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn wrong_handshake_is_refused() {
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let config = dummy_config("hello");
        let socket_path = config.socket_path();
        let app = tokio::spawn(async move {
            let mut stream = connect(&socket_path).await;
            stream.write_all(b"stator-sm/9\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut machine = ProcessMachine::new(config);
        let error = machine.apply(1, 1, b"cmd").await.unwrap_err();
        app.abort();
        let AppError::Protocol(message) = &error else {
            panic!("expected a protocol error, got {error:?}");
        };
        assert!(message.contains("stator-sm/9"), "{message}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn hung_app_times_out_and_is_restarted() {
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let mut config = dummy_config("hung");
        config.limits.request_timeout = Duration::from_millis(200);
        config.limits.max_restarts_per_window = 0;
        // The fake app greets, reads the request and never answers.
        let app = fake_app(config.socket_path(), Vec::new());
        let mut machine = ProcessMachine::new(config);
        let error = machine.apply(1, 1, b"cmd").await.unwrap_err();
        app.abort();
        let AppError::Unavailable(message) = &error else {
            panic!("expected unavailable, got {error:?}");
        };
        assert!(message.contains("timed out after 200 ms"), "{message}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn truncated_frames_exhaust_the_restart_budget() {
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let mut config = dummy_config("trunc");
        config.limits.max_restarts_per_window = 2;
        let socket_path = config.socket_path();
        // Every connection announces 10 bytes, sends 3 and hangs up, like an app that
        // dies mid-write. Each is a crash, so the host restarts until the budget ends.
        let app = tokio::spawn(async move {
            loop {
                let mut stream = connect(&socket_path).await;
                stream.write_all(HANDSHAKE).await.unwrap();
                let mut greeting = [0u8; HANDSHAKE.len()];
                stream.read_exact(&mut greeting).await.unwrap();
                read_request(&mut stream).await;
                stream.write_all(&[0, 0, 0, 10, 0x80, 1, 2]).await.unwrap();
            }
        });
        let mut machine = ProcessMachine::new(config);
        let error = machine.apply(1, 1, b"cmd").await.unwrap_err();
        app.abort();
        let AppError::Unavailable(message) = &error else {
            panic!("expected unavailable, got {error:?}");
        };
        assert!(message.contains("budget exhausted"), "{message}");
        assert!(message.contains("2 of 9 body bytes"), "{message}");
        assert_eq!(machine.restarts(), 2);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn app_that_never_starts_is_a_clear_error() {
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let config = common::config("nobin", "/nonexistent/stator-app", &[]);
        let mut machine = ProcessMachine::new(config);
        let error = machine.start().await.unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/stator-app"),
            "{error}"
        );

        // An app that exits at once is a crash each time: restarted, then given up.
        let mut config = common::config("exits", "true", &[]);
        config.limits.max_restarts_per_window = 1;
        config.limits.restart_backoff_initial = Duration::from_millis(10);
        let mut machine = ProcessMachine::new(config);
        let error = machine.query(1, b"").await.unwrap_err();
        let AppError::Unavailable(message) = &error else {
            panic!("expected unavailable, got {error:?}");
        };
        assert!(message.contains("exited before connecting"), "{message}");
        assert_eq!(machine.restarts(), 1);
    })
    .await
    .expect("test finished in time");
}
