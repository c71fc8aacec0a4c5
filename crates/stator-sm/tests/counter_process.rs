//! The Rust counter example run through [`ProcessMachine`]: every call round-trips.

mod common;

use stator_api::app::{AppError, StateMachine, StateMachineFactory};
use stator_api::ids::GroupId;
use stator_sm::host::{ProcessFactory, ProcessMachine, ProcessTemplate};

#[tokio::test]
async fn apply_query_snapshot_restore_round_trip() {
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let binary = common::counter_binary();
        let mut machine =
            ProcessMachine::new(common::config("counter", binary.display().to_string(), &[]));

        assert_eq!(machine.apply(1, 10, b"+5").await.unwrap(), b"5");
        assert_eq!(machine.apply(2, 11, b"-2").await.unwrap(), b"3");
        assert_eq!(
            machine.apply(3, 12, b"oops").await.unwrap(),
            b"error: command [111, 111, 112, 115] is not an integer"
        );
        assert_eq!(machine.query(13, b"").await.unwrap(), b"3");
        assert_eq!(machine.query(13, b"applied").await.unwrap(), b"2");

        let snapshot = machine.snapshot().await.unwrap();
        assert_eq!(machine.state_bytes(), snapshot.len() as u64);
        assert_eq!(machine.apply(4, 14, b"+100").await.unwrap(), b"103");

        machine.restore(&snapshot).await.unwrap();
        assert_eq!(machine.query(15, b"").await.unwrap(), b"3");

        // The app rejects a snapshot of the wrong shape; the replica must stop.
        let error = machine.restore(b"short").await.unwrap_err();
        assert!(matches!(error, AppError::BadSnapshot(_)), "{error:?}");
        let error = machine.query(16, b"").await.unwrap_err();
        assert!(matches!(error, AppError::Unavailable(_)), "{error:?}");
        assert_eq!(machine.restarts(), 0);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn factory_names_run_dirs_and_passes_the_environment() {
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let binary = common::counter_binary();
        let run_root = common::run_dir("factory");
        let factory = ProcessFactory::new(
            ProcessTemplate {
                program: binary.display().to_string(),
                args: Vec::new(),
                env: Vec::new(),
                working_dir: None,
                service: "counter".to_string(),
                limits: Default::default(),
            },
            &run_root,
            7,
        );
        let group = GroupId::new(3, 2);
        let config = factory.config_for(group);
        assert_eq!(config.run_dir, run_root.join("counter").join("p2"));
        assert_eq!((config.partition, config.replica), (2, 7));

        let mut machine = factory.create(group);
        assert_eq!(machine.apply(1, 1, b"41").await.unwrap(), b"41");
        let handle = factory.handle(group).expect("factory keeps a handle");
        assert!(handle.pid().is_some());
        assert_eq!(handle.restarts(), 0);
        assert!(config.socket_path().exists());
        drop(machine);
        assert!(!config.socket_path().exists(), "drop removes the socket");
    })
    .await
    .expect("test finished in time");
}
