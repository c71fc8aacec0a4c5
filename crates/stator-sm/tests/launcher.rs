//! A [`Launcher`] changes how the app starts, not what the machine does: the counter
//! example started through a launcher is restarted, restored and replayed after a
//! `kill -9` as a plain process is, with the launcher's cleanup after every exit.

mod common;

use async_trait::async_trait;
use stator_api::app::{AppError, StateMachine};
use stator_sm::host::{Launcher, ProcessMachine, ProcessMachineConfig};
use stator_sm::SmError;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::process::Command;

/// Runs the counter binary, counting starts and cleanups.
#[derive(Default)]
struct CountingLauncher {
    binary: PathBuf,
    starts: AtomicU32,
    cleanups: AtomicU32,
    refuse: bool,
}

#[async_trait]
impl Launcher for CountingLauncher {
    async fn command(&self, config: &ProcessMachineConfig) -> Result<Command, SmError> {
        if self.refuse {
            return Err(SmError::Launch {
                message: "image oci:missing:1: no such file".into(),
            });
        }
        self.starts.fetch_add(1, Ordering::SeqCst);
        let mut command = Command::new(&self.binary);
        command.env("STATOR_SM_SOCKET", config.socket_path());
        Ok(command)
    }

    fn cleanup(&self, _config: &ProcessMachineConfig) {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_launched_app_is_restarted_restored_and_cleaned_up_after() {
    tokio::time::timeout(common::TEST_TIMEOUT, async {
        let launcher = Arc::new(CountingLauncher {
            binary: common::counter_binary(),
            ..Default::default()
        });
        // The program is only a name in messages: the launcher builds the command.
        let config = common::config("launched", "unused", &[]);
        let mut machine = ProcessMachine::with_launcher(config, launcher.clone());
        assert_eq!(machine.apply(1, 10, b"+5").await.unwrap(), b"5");
        assert_eq!(machine.apply(2, 11, b"+2").await.unwrap(), b"7");
        assert_eq!(launcher.starts.load(Ordering::SeqCst), 1);

        common::kill_9(machine.pid().expect("the app runs"));
        assert_eq!(machine.apply(3, 12, b"+1").await.unwrap(), b"8");
        assert_eq!(machine.restarts(), 1);
        assert_eq!(launcher.starts.load(Ordering::SeqCst), 2);
        assert_eq!(
            launcher.cleanups.load(Ordering::SeqCst),
            1,
            "after the crash"
        );

        machine.shutdown().await;
        assert_eq!(
            launcher.cleanups.load(Ordering::SeqCst),
            2,
            "after shutdown"
        );
        drop(machine);
        assert_eq!(
            launcher.cleanups.load(Ordering::SeqCst),
            2,
            "nothing left to clean"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn a_launcher_that_cannot_start_the_app_stops_the_replica_with_its_reason() {
    let launcher = Arc::new(CountingLauncher {
        refuse: true,
        ..Default::default()
    });
    let mut machine =
        ProcessMachine::with_launcher(common::config("refused", "unused", &[]), launcher);
    let error = machine.apply(1, 10, b"+1").await.unwrap_err();
    assert!(
        matches!(&error, AppError::Unavailable(message) if message.contains("no such file")),
        "{error:?}"
    );
    assert_eq!(
        machine.restarts(),
        0,
        "a launch failure is not a crash to retry"
    );
}
