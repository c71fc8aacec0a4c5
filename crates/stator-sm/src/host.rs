//! The agent side: [`ProcessMachine`] runs an app process and is a [`StateMachine`].
//!
//! The app's state lives only in its process, so the adapter keeps what it needs to
//! rebuild it: the latest snapshot bytes and every entry applied since. When the app
//! dies, hangs or drops the socket, the adapter starts it again (capped exponential
//! back-off, bounded budget), RESTOREs the snapshot, replays the entries and retries
//! the request that failed. The replica never notices; an app crash is not a replica
//! loss.

use crate::error::SmError;
use crate::frame::{self, Request, Response, HANDSHAKE, LENGTH_PREFIX_BYTES};
use crate::sdk::{ENV_PARTITION, ENV_REPLICA, ENV_SERVICE, ENV_SOCKET};
use async_trait::async_trait;
use stator_api::app::{AppError, StateMachine, StateMachineFactory};
use stator_api::ids::{GroupId, NodeId};
use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

/// Applies between two automatic snapshots: bounds the replay after a crash to this
/// many entries while a snapshot's cost is spread over many applies.
pub const SNAPSHOT_EVERY_APPLIES: usize = 1000;

/// Command bytes buffered for replay before an early snapshot: the buffer costs host
/// memory per replica, and replaying more than this is slower than one RESTORE.
pub const MAX_REPLAY_BYTES: usize = 16 * 1024 * 1024;

/// How long a started app has to connect and send its greeting: covers interpreter
/// start-up (Python, the JVM) on a loaded machine.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one request may take: a RESTORE of a [`frame::MAX_FRAME_BYTES`] snapshot
/// in a slow language fits; longer means the app is hung and gets restarted.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Restarts allowed within [`RESTART_WINDOW`] before the replica is stopped: enough
/// to ride out a few crashes, few enough that a crash loop is cut short.
pub const MAX_RESTARTS_PER_WINDOW: u32 = 5;

/// The window over which restarts are counted.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Delay before the first restart in a window; doubles for each further one.
pub const RESTART_BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// Longest delay between restarts, so a recovering app is not left idle for long.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long [`ProcessMachine::shutdown`] lets the app exit by itself before killing it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Longest socket path: `sun_path` is 108 bytes on Linux, one of them the NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Name of the socket in the run directory.
pub const SOCKET_FILE: &str = "sm.sock";
/// Name of the app's stdout log in the run directory (appended to across restarts).
pub const STDOUT_LOG_FILE: &str = "app.stdout.log";
/// Name of the app's stderr log in the run directory (appended to across restarts).
pub const STDERR_LOG_FILE: &str = "app.stderr.log";

/// Tunable limits of one [`ProcessMachine`]; [`Default`] gives the named constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessLimits {
    /// See [`SNAPSHOT_EVERY_APPLIES`].
    pub snapshot_every_applies: usize,
    /// See [`MAX_REPLAY_BYTES`].
    pub max_replay_bytes: usize,
    /// See [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// See [`MAX_RESTARTS_PER_WINDOW`].
    pub max_restarts_per_window: u32,
    /// See [`RESTART_WINDOW`].
    pub restart_window: Duration,
    /// See [`RESTART_BACKOFF_INITIAL`].
    pub restart_backoff_initial: Duration,
    /// See [`RESTART_BACKOFF_MAX`].
    pub restart_backoff_max: Duration,
}

impl Default for ProcessLimits {
    fn default() -> Self {
        ProcessLimits {
            snapshot_every_applies: SNAPSHOT_EVERY_APPLIES,
            max_replay_bytes: MAX_REPLAY_BYTES,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            max_restarts_per_window: MAX_RESTARTS_PER_WINDOW,
            restart_window: RESTART_WINDOW,
            restart_backoff_initial: RESTART_BACKOFF_INITIAL,
            restart_backoff_max: RESTART_BACKOFF_MAX,
        }
    }
}

/// How to run one replica's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMachineConfig {
    /// The program to execute (looked up in `PATH` when it has no slash).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment on top of the agent's own and the `STATOR_*` variables.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` keeps the agent's.
    pub working_dir: Option<PathBuf>,
    /// Directory for the socket and the logs, created if missing. Keep it short: the
    /// socket path must fit in [`MAX_SOCKET_PATH_BYTES`].
    pub run_dir: PathBuf,
    /// Service name, passed as `STATOR_SERVICE`.
    pub service: String,
    /// Partition index, passed as `STATOR_PARTITION`.
    pub partition: u32,
    /// Replica (node) id, passed as `STATOR_REPLICA`.
    pub replica: NodeId,
    /// Snapshot cadence, timeouts and restart budget.
    pub limits: ProcessLimits,
}

impl ProcessMachineConfig {
    /// The socket the app is told to connect to.
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join(SOCKET_FILE)
    }
}

/// How a [`ProcessMachine`] starts its app and cleans up after it.
///
/// The default runs [`ProcessMachineConfig::program`] directly. The agent's container
/// driver implements it to run the app inside a container (`runc run` as the child),
/// with the run directory bind-mounted so the app reaches the socket.
///
/// To ensure correctness an implementation must:
/// - return a command whose process lives exactly as long as the app: the machine
///   watches it to tell a crash, and kills it to stop the app;
/// - make [`Launcher::cleanup`] idempotent and safe to call when nothing was started:
///   it runs after every exit of the app (crash, restart, shutdown) and on drop.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// The command that starts the app once; called before every (re)start. The
    /// machine sets stdin, stdout, stderr and `kill_on_drop` itself.
    async fn command(&self, config: &ProcessMachineConfig) -> Result<Command, SmError>;

    /// Removes what a start left behind once its process is gone (e.g. a container and
    /// its mounts). Blocking; keep it short: it also runs on drop.
    fn cleanup(&self, config: &ProcessMachineConfig);
}

/// A cheap, shareable view of a running [`ProcessMachine`], for metrics and tests
/// (the machine itself usually sits boxed inside a replica).
#[derive(Debug, Clone, Default)]
pub struct ProcessHandle(Arc<HandleState>);

#[derive(Debug, Default)]
struct HandleState {
    restarts: AtomicU64,
    /// 0 while no app process runs.
    pid: AtomicU32,
    stopped: AtomicBool,
}

impl ProcessHandle {
    /// Times the app was started again after a crash (the first start not counted).
    pub fn restarts(&self) -> u64 {
        self.0.restarts.load(Ordering::Relaxed)
    }

    /// The running app's process id, if one runs.
    pub fn pid(&self) -> Option<u32> {
        match self.0.pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// True once the machine failed for good and the replica must stop.
    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::Relaxed)
    }
}

/// One entry applied since the last snapshot, kept to replay after a crash.
#[derive(Debug)]
struct BufferedApply {
    index: u64,
    time_ms: u64,
    command: Vec<u8>,
}

/// A [`StateMachine`] served by an external process over `stator-sm/1`.
///
/// Construction does no IO; the app starts on the first call (or [`Self::start`]).
/// Dropping the machine kills the app and removes the socket.
pub struct ProcessMachine {
    config: ProcessMachineConfig,
    /// None: run `config.program` directly.
    launcher: Option<Arc<dyn Launcher>>,
    handle: ProcessHandle,
    listener: Option<UnixListener>,
    child: Option<Child>,
    connection: Option<UnixStream>,
    started_once: bool,
    /// Latest snapshot taken from (or restored into) the app; `None` = empty state.
    base_snapshot: Option<Vec<u8>>,
    /// Entries applied on top of `base_snapshot`, in order.
    replay: Vec<BufferedApply>,
    replay_bytes: usize,
    /// Start times of the restarts inside the current window, oldest first.
    restart_times: VecDeque<Instant>,
    last_failure: String,
    /// Set once the machine failed for good; every later call returns it.
    stopped: Option<String>,
    /// Reused to encode requests.
    write_buffer: Vec<u8>,
}

impl ProcessMachine {
    /// A machine for `config`; nothing is started yet. A relative `run_dir` is taken
    /// from the current directory, so the app finds the socket whatever its own
    /// working directory.
    pub fn new(mut config: ProcessMachineConfig) -> Self {
        if config.run_dir.is_relative() {
            if let Ok(current_dir) = std::env::current_dir() {
                config.run_dir = current_dir.join(&config.run_dir);
            }
        }
        ProcessMachine {
            config,
            launcher: None,
            handle: ProcessHandle::default(),
            listener: None,
            child: None,
            connection: None,
            started_once: false,
            base_snapshot: None,
            replay: Vec::new(),
            replay_bytes: 0,
            restart_times: VecDeque::new(),
            last_failure: String::new(),
            stopped: None,
            write_buffer: Vec::new(),
        }
    }

    /// A machine whose app `launcher` starts (e.g. inside a container).
    pub fn with_launcher(config: ProcessMachineConfig, launcher: Arc<dyn Launcher>) -> Self {
        let mut machine = Self::new(config);
        machine.launcher = Some(launcher);
        machine
    }

    /// The shareable handle (restart count, pid).
    pub fn handle(&self) -> ProcessHandle {
        self.handle.clone()
    }

    /// The configuration this machine runs.
    pub fn config(&self) -> &ProcessMachineConfig {
        &self.config
    }

    /// Times the app was restarted after a crash.
    pub fn restarts(&self) -> u64 {
        self.handle.restarts()
    }

    /// The running app's process id, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.handle.pid()
    }

    /// Starts the app now instead of on the first call.
    pub async fn start(&mut self) -> Result<(), SmError> {
        self.check_running()?;
        let result = self.ensure_running().await;
        self.settle(result).await
    }

    /// Closes the socket, gives the app [`SHUTDOWN_GRACE`] to exit, then kills it.
    pub async fn shutdown(&mut self) {
        self.connection = None;
        if let Some(mut child) = self.child.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, child.wait())
                .await
                .is_err()
            {
                kill_and_reap(&mut child).await;
            }
            self.clean_up_after_exit();
        }
        self.handle.0.pid.store(0, Ordering::Relaxed);
    }

    /// Lets the launcher remove what the last start left (a container).
    fn clean_up_after_exit(&self) {
        if let Some(launcher) = &self.launcher {
            launcher.cleanup(&self.config);
        }
    }

    /// Fails fast once the machine has stopped.
    fn check_running(&self) -> Result<(), SmError> {
        match &self.stopped {
            Some(reason) => Err(SmError::Stopped {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Turns any error into a permanent stop of this machine: the contract says a
    /// replica whose machine failed is stopped, so nothing should limp on.
    async fn settle<T>(&mut self, result: Result<T, SmError>) -> Result<T, SmError> {
        if let Err(error) = &result {
            tracing::error!(service = %self.config.service, partition = self.config.partition,
                %error, "app failed; stopping the replica's machine");
            self.stopped = Some(error.to_string());
            self.handle.0.stopped.store(true, Ordering::Relaxed);
            self.connection = None;
            if let Some(mut child) = self.child.take() {
                kill_and_reap(&mut child).await;
                self.clean_up_after_exit();
            }
            self.handle.0.pid.store(0, Ordering::Relaxed);
        }
        result
    }

    /// Sends `request` and returns the OK payload, restarting and restoring the app
    /// as often as the budget allows when it crashes.
    async fn call(&mut self, request: Request<'_>) -> Result<Vec<u8>, SmError> {
        loop {
            self.ensure_running().await?;
            let connection = self.connection.as_mut().expect("ensure_running connects");
            let timeout = self.config.limits.request_timeout;
            match exchange(connection, &mut self.write_buffer, &request, timeout).await {
                Ok(reply) => return Ok(reply),
                Err(error) if error.is_crash() => self.note_crash(error),
                Err(error) => return Err(error),
            }
        }
    }

    /// Makes sure an app runs, connected and holding the replica's state.
    async fn ensure_running(&mut self) -> Result<(), SmError> {
        while self.connection.is_none() {
            match self.bring_up().await {
                Ok(connection) => self.connection = Some(connection),
                Err(error) if error.is_crash() => self.note_crash(error),
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn note_crash(&mut self, error: SmError) {
        tracing::warn!(service = %self.config.service, partition = self.config.partition,
            %error, "app crashed; restarting it");
        self.last_failure = error.to_string();
        self.connection = None;
    }

    /// (Re)starts the app and rebuilds its state from the snapshot and the replay
    /// buffer. Returns the connection only once the state is complete.
    async fn bring_up(&mut self) -> Result<UnixStream, SmError> {
        if self.started_once {
            self.charge_restart().await?;
        }
        self.started_once = true;
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child).await;
            self.clean_up_after_exit();
        }
        self.handle.0.pid.store(0, Ordering::Relaxed);
        self.ensure_listener()?;
        self.spawn().await?;
        let mut connection = self.accept().await?;

        let timeout = self.config.limits.request_timeout;
        if let Some(snapshot) = &self.base_snapshot {
            let restore = Request::Restore { snapshot };
            exchange(&mut connection, &mut self.write_buffer, &restore, timeout)
                .await
                .map_err(|error| match error {
                    SmError::AppReported { message, .. } => SmError::NotDeterministic {
                        index: 0,
                        message: format!("restoring its own snapshot failed: {message}"),
                    },
                    other => other,
                })?;
        }
        for entry in &self.replay {
            let apply = Request::Apply {
                index: entry.index,
                time_ms: entry.time_ms,
                command: &entry.command,
            };
            // The client already has this entry's reply; only the state matters.
            exchange(&mut connection, &mut self.write_buffer, &apply, timeout)
                .await
                .map_err(|error| match error {
                    SmError::AppReported { message, .. } => SmError::NotDeterministic {
                        index: entry.index,
                        message,
                    },
                    other => other,
                })?;
        }
        Ok(connection)
    }

    /// Counts one restart against the budget and waits out the back-off.
    async fn charge_restart(&mut self) -> Result<(), SmError> {
        let limits = &self.config.limits;
        let now = Instant::now();
        while self
            .restart_times
            .front()
            .is_some_and(|&at| now.duration_since(at) > limits.restart_window)
        {
            self.restart_times.pop_front();
        }
        let in_window = self.restart_times.len() as u32;
        if in_window >= limits.max_restarts_per_window {
            return Err(SmError::RestartBudgetExhausted {
                restarts: in_window,
                window_s: limits.restart_window.as_secs(),
                last: self.last_failure.clone(),
            });
        }
        tokio::time::sleep(restart_backoff(limits, in_window)).await;
        self.restart_times.push_back(Instant::now());
        self.handle.0.restarts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn ensure_listener(&mut self) -> Result<(), SmError> {
        if self.listener.is_some() {
            return Ok(());
        }
        let socket_path = self.config.socket_path();
        let length_bytes = socket_path.as_os_str().len();
        if length_bytes > MAX_SOCKET_PATH_BYTES {
            return Err(SmError::SocketPathTooLong {
                path: socket_path,
                length_bytes,
                max_bytes: MAX_SOCKET_PATH_BYTES,
            });
        }
        std::fs::create_dir_all(&self.config.run_dir)
            .map_err(SmError::io("creating the run directory"))?;
        // A socket file left by an earlier agent would make bind fail.
        match std::fs::remove_file(&socket_path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SmError::Io {
                    context: "removing a stale socket file",
                    source,
                })
            }
        }
        let listener =
            UnixListener::bind(&socket_path).map_err(SmError::io("binding the app socket"))?;
        self.listener = Some(listener);
        Ok(())
    }

    /// The command of an app run directly (no launcher).
    fn process_command(config: &ProcessMachineConfig) -> Command {
        let mut command = Command::new(&config.program);
        command
            .args(&config.args)
            .envs(config.env.iter().map(|(key, value)| (key, value)))
            .env(ENV_SOCKET, config.socket_path())
            .env(ENV_SERVICE, &config.service)
            .env(ENV_PARTITION, config.partition.to_string())
            .env(ENV_REPLICA, config.replica.to_string());
        if let Some(working_dir) = &config.working_dir {
            command.current_dir(working_dir);
        }
        command
    }

    async fn spawn(&mut self) -> Result<(), SmError> {
        let config = &self.config;
        let open_log = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(config.run_dir.join(name))
                .map_err(SmError::io("opening an app log file"))
        };
        let mut command = match &self.launcher {
            Some(launcher) => launcher.command(config).await?,
            None => Self::process_command(config),
        };
        command
            .stdin(Stdio::null())
            .stdout(open_log(STDOUT_LOG_FILE)?)
            .stderr(open_log(STDERR_LOG_FILE)?)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| SmError::Spawn {
            program: config.program.clone(),
            source,
        })?;
        self.handle
            .0
            .pid
            .store(child.id().unwrap_or(0), Ordering::Relaxed);
        self.child = Some(child);
        Ok(())
    }

    /// Waits for the app to connect and exchange greetings, or to die trying.
    async fn accept(&mut self) -> Result<UnixStream, SmError> {
        let listener = self.listener.as_ref().expect("ensure_listener ran");
        let child = self.child.as_mut().expect("spawn ran");
        let handshake_timeout = self.config.limits.handshake_timeout;
        let handshake = async {
            let mut stream = tokio::select! {
                // A connection that is ready wins over an exit that is also ready.
                biased;
                accepted = listener.accept() => {
                    accepted.map_err(SmError::io("accepting the app's connection"))?.0
                }
                status = child.wait() => {
                    let status = status.map_err(SmError::io("waiting for the app"))?;
                    return Err(SmError::AppExited { status: status.to_string() });
                }
            };
            let mut greeting = [0u8; HANDSHAKE.len()];
            stream
                .read_exact(&mut greeting)
                .await
                .map_err(SmError::io("reading the app's handshake"))?;
            if &greeting != HANDSHAKE {
                return Err(SmError::BadHandshake {
                    expected: String::from_utf8_lossy(HANDSHAKE).into_owned(),
                    received: String::from_utf8_lossy(&greeting).into_owned(),
                });
            }
            stream
                .write_all(HANDSHAKE)
                .await
                .map_err(SmError::io("answering the app's handshake"))?;
            Ok(stream)
        };
        tokio::time::timeout(handshake_timeout, handshake)
            .await
            .map_err(|_| SmError::Timeout {
                context: "waiting for the app to connect and send its handshake",
                after_ms: handshake_timeout.as_millis() as u64,
            })?
    }

    /// Remembers an applied entry for replay; snapshots when the buffer is full.
    async fn record_apply(
        &mut self,
        index: u64,
        time_ms: u64,
        command: &[u8],
    ) -> Result<(), SmError> {
        self.replay.push(BufferedApply {
            index,
            time_ms,
            command: command.to_vec(),
        });
        self.replay_bytes += command.len();
        let limits = &self.config.limits;
        if self.replay.len() >= limits.snapshot_every_applies
            || self.replay_bytes >= limits.max_replay_bytes
        {
            let snapshot = self.call(Request::Snapshot).await?;
            self.set_base(snapshot);
        }
        Ok(())
    }

    fn set_base(&mut self, snapshot: Vec<u8>) {
        self.base_snapshot = Some(snapshot);
        self.replay.clear();
        self.replay_bytes = 0;
    }
}

impl Drop for ProcessMachine {
    fn drop(&mut self) {
        // kill_on_drop ends the app (or its launcher's process, hence the cleanup); the
        // socket file would otherwise linger.
        if self.child.is_some() {
            self.clean_up_after_exit();
        }
        if self.listener.is_some() {
            let _ = std::fs::remove_file(self.config.socket_path());
        }
    }
}

impl std::fmt::Debug for ProcessMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessMachine")
            .field("program", &self.config.program)
            .field("run_dir", &self.config.run_dir)
            .field("pid", &self.pid())
            .field("restarts", &self.restarts())
            .field("replay_entries", &self.replay.len())
            .field("stopped", &self.stopped)
            .finish()
    }
}

#[async_trait]
impl StateMachine for ProcessMachine {
    async fn apply(
        &mut self,
        index: u64,
        time_ms: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, AppError> {
        self.check_running()?;
        let result = async {
            let reply = self
                .call(Request::Apply {
                    index,
                    time_ms,
                    command,
                })
                .await?;
            self.record_apply(index, time_ms, command).await?;
            Ok(reply)
        }
        .await;
        Ok(self.settle(result).await?)
    }

    async fn query(&mut self, time_ms: u64, request: &[u8]) -> Result<Vec<u8>, AppError> {
        self.check_running()?;
        let result = self.call(Request::Query { time_ms, request }).await;
        Ok(self.settle(result).await?)
    }

    async fn snapshot(&mut self) -> Result<Vec<u8>, AppError> {
        self.check_running()?;
        let result = self.call(Request::Snapshot).await;
        let snapshot = self.settle(result).await?;
        // A snapshot covers every apply so far, so it is also the new base.
        self.set_base(snapshot.clone());
        Ok(snapshot)
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError> {
        self.check_running()?;
        let result = self.call(Request::Restore { snapshot }).await;
        match self.settle(result).await {
            Ok(_) => {
                self.set_base(snapshot.to_vec());
                Ok(())
            }
            Err(SmError::AppReported { message, .. }) => Err(AppError::BadSnapshot(message)),
            Err(other) => Err(other.into()),
        }
    }

    /// The size of the latest snapshot: the app's memory is not visible from here.
    fn state_bytes(&self) -> u64 {
        self.base_snapshot.as_ref().map_or(0, |s| s.len() as u64)
    }
}

/// Writes one request and reads its response, all within `timeout`.
async fn exchange(
    stream: &mut UnixStream,
    write_buffer: &mut Vec<u8>,
    request: &Request<'_>,
    timeout: Duration,
) -> Result<Vec<u8>, SmError> {
    write_buffer.clear();
    frame::encode_request(request, write_buffer)?;
    let round_trip = async {
        stream
            .write_all(write_buffer)
            .await
            .map_err(SmError::io("sending a request"))?;
        let mut head = [0u8; LENGTH_PREFIX_BYTES + 1];
        stream
            .read_exact(&mut head[..LENGTH_PREFIX_BYTES])
            .await
            .map_err(SmError::io("reading a response"))?;
        let length = frame::parse_length(
            head[..LENGTH_PREFIX_BYTES]
                .try_into()
                .expect("4-byte prefix"),
        )?;
        stream
            .read_exact(&mut head[LENGTH_PREFIX_BYTES..])
            .await
            .map_err(SmError::io("reading a response"))?;
        // Check the type before reading a possibly large body.
        let is_ok = match frame::decode_response(&head[LENGTH_PREFIX_BYTES..])? {
            Response::Ok(_) => true,
            Response::Error(_) => false,
        };
        let body_bytes = length - 1;
        // Grow the buffer as bytes arrive rather than trusting the prefix up front.
        let mut body = Vec::new();
        (&mut *stream)
            .take(body_bytes as u64)
            .read_to_end(&mut body)
            .await
            .map_err(SmError::io("reading a response"))?;
        if body.len() != body_bytes {
            return Err(SmError::Io {
                context: "reading a response",
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "app closed the socket after {} of {body_bytes} body bytes",
                        body.len()
                    ),
                ),
            });
        }
        if is_ok {
            Ok(body)
        } else {
            Err(SmError::AppReported {
                request: request.describe(),
                message: String::from_utf8_lossy(&body).into_owned(),
            })
        }
    };
    tokio::time::timeout(timeout, round_trip)
        .await
        .map_err(|_| SmError::Timeout {
            context: "waiting for a response",
            after_ms: timeout.as_millis() as u64,
        })?
}

/// The wait before a restart when `restarts_in_window` restarts already happened in
/// the window: the initial back-off doubled for each, capped.
pub fn restart_backoff(limits: &ProcessLimits, restarts_in_window: u32) -> Duration {
    // 2^16 times any sane initial back-off is already past any sane cap.
    let factor = 1u32 << restarts_in_window.min(16);
    limits
        .restart_backoff_initial
        .saturating_mul(factor)
        .min(limits.restart_backoff_max)
}

async fn kill_and_reap(child: &mut Child) {
    // Errors mean it already exited; wait() then reaps it either way.
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// What every replica of one service runs; the per-replica fields come from the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessTemplate {
    /// See [`ProcessMachineConfig::program`].
    pub program: String,
    /// See [`ProcessMachineConfig::args`].
    pub args: Vec<String>,
    /// See [`ProcessMachineConfig::env`].
    pub env: Vec<(String, String)>,
    /// See [`ProcessMachineConfig::working_dir`].
    pub working_dir: Option<PathBuf>,
    /// See [`ProcessMachineConfig::service`].
    pub service: String,
    /// See [`ProcessMachineConfig::limits`].
    pub limits: ProcessLimits,
}

/// Names a replica's run directory from its group.
pub type RunDirFn = Arc<dyn Fn(GroupId) -> PathBuf + Send + Sync>;

/// Builds a [`ProcessMachine`] per group for the replicas one agent hosts.
pub struct ProcessFactory {
    template: ProcessTemplate,
    replica: NodeId,
    run_dir_for: RunDirFn,
    handles: Mutex<HashMap<GroupId, ProcessHandle>>,
}

impl ProcessFactory {
    /// A factory for agent `replica`; run directories are
    /// `run_root/<service>/p<partition>` (one agent hosts one replica per group).
    pub fn new(template: ProcessTemplate, run_root: impl Into<PathBuf>, replica: NodeId) -> Self {
        let run_root = run_root.into();
        let service = template.service.clone();
        let run_dir_for: RunDirFn = Arc::new(move |group: GroupId| {
            run_root
                .join(&service)
                .join(format!("p{}", group.partition()))
        });
        Self::with_run_dir_fn(template, replica, run_dir_for)
    }

    /// A factory whose run directories are named by `run_dir_for`.
    pub fn with_run_dir_fn(
        template: ProcessTemplate,
        replica: NodeId,
        run_dir_for: RunDirFn,
    ) -> Self {
        ProcessFactory {
            template,
            replica,
            run_dir_for,
            handles: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration the factory gives `group`'s machine.
    pub fn config_for(&self, group: GroupId) -> ProcessMachineConfig {
        let template = &self.template;
        ProcessMachineConfig {
            program: template.program.clone(),
            args: template.args.clone(),
            env: template.env.clone(),
            working_dir: template.working_dir.clone(),
            run_dir: (self.run_dir_for)(group),
            service: template.service.clone(),
            partition: group.partition(),
            replica: self.replica,
            limits: template.limits.clone(),
        }
    }

    /// The handle of the machine last created for `group` (pid, restarts).
    pub fn handle(&self, group: GroupId) -> Option<ProcessHandle> {
        self.handles
            .lock()
            .expect("handles lock poisoned")
            .get(&group)
            .cloned()
    }

    /// Where `group`'s socket and logs live.
    pub fn run_dir(&self, group: GroupId) -> PathBuf {
        (self.run_dir_for)(group)
    }
}

impl StateMachineFactory for ProcessFactory {
    fn create(&self, group: GroupId) -> Box<dyn StateMachine> {
        let machine = ProcessMachine::new(self.config_for(group));
        // A std mutex is fine: nothing awaits while it is held.
        self.handles
            .lock()
            .expect("handles lock poisoned")
            .insert(group, machine.handle());
        Box::new(machine)
    }
}

impl std::fmt::Debug for ProcessFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessFactory")
            .field("template", &self.template)
            .field("replica", &self.replica)
            .finish()
    }
}

/// The socket path a run directory gives, for apps and tests that connect by hand.
pub fn socket_path_in(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let limits = ProcessLimits::default();
        let delays_ms: Vec<u128> = (0..8)
            .map(|restarts| restart_backoff(&limits, restarts).as_millis())
            .collect();
        assert_eq!(delays_ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(restart_backoff(&limits, u32::MAX), RESTART_BACKOFF_MAX);
    }

    #[test]
    fn relative_run_dirs_become_absolute() {
        let machine = ProcessMachine::new(ProcessMachineConfig {
            program: "true".to_string(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            run_dir: PathBuf::from("run/p0"),
            service: "s".to_string(),
            partition: 0,
            replica: 1,
            limits: ProcessLimits::default(),
        });
        assert!(machine.config().socket_path().is_absolute());
        assert!(machine.config().socket_path().ends_with("run/p0/sm.sock"));
    }
}
