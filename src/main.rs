//! The `outpost` command line. Only argument parsing, logging set-up and dispatch live here;
//! every command's work is in the library.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use outpost::config::{Config, LogFormat, Overrides};
use outpost::{commands, http};

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The static binary's `memcpy` (see `outpost::memcopy`): musl's was a sixth of a gateway
/// call's CPU. Defined here, in the binary's own object, so the linker takes it before libc's.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod copies {
    /// # Safety
    /// As C's `memcpy`.
    // Never inlined into `__memcpy_fwd`: its loop must stay in a function named `memcpy`,
    // which the compiler never turns back into a call to `memcpy` or `memmove`.
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's, as for C's `memcpy`.
        unsafe { outpost::memcopy::copy_forward(dst, src, n) };
        dst
    }

    /// musl's `memmove` copies forward through this symbol, which its `memcpy` object also
    /// defines; defining both keeps that object out of the link.
    ///
    /// # Safety
    /// As C's `memmove` with the destination at or below the source.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __memcpy_fwd(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: `memcpy` copies forward, correct for this overlap.
        unsafe { memcpy(dst, src, n) }
    }
}

/// Multi-tenant real-time collaboration in one binary.
#[derive(Parser, Debug)]
#[command(name = "outpost", version = outpost::VERSION, propagate_version = true)]
struct Cli {
    /// TOML configuration file (keys as in packaging/outpost.toml).
    #[arg(long, global = true, env = "OUTPOST_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve {
        /// Listen address (overrides `listen`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Take a consistent backup while the server runs (or not).
    Backup {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Restore a backup into a data dir (given with --data).
    Restore {
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Replace the store in a non-empty data dir.
        #[arg(long)]
        force: bool,
    },
    /// Audit chain commands.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Operator commands.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Token signing key commands.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Vault commands.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Check every stored file against its digest and every file record against its bytes;
    /// exit 1 if anything is missing or damaged.
    Fsck,
    /// Rebuild the search index from the store.
    Reindex,
    /// Show where the store file's bytes go, table by table.
    Space {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the version.
    Version,
    /// Write the man page, shell completions or the documented configuration file (packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        command: GenerateCommand,
    },
}

#[derive(Subcommand, Debug)]
enum GenerateCommand {
    /// Write the man page, outpost.1, into DIR.
    Man { dir: PathBuf },
    /// Write the completion script for SHELL into DIR (outpost.bash, _outpost, outpost.fish).
    Completions { shell: clap_complete::Shell, dir: PathBuf },
    /// Print the configuration file with every key, its meaning and its default.
    Config,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Add a new current signing key; older keys keep verifying until their tokens expire.
    Rotate,
}

#[derive(Subcommand, Debug)]
enum VaultCommand {
    /// Replace the master key and re-seal every secret under it.
    Rotate,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values.
    Check {
        /// Also validate this listen address.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Verify every organization's audit chain; exit 1 at the first broken link.
    Verify,
}

#[derive(Subcommand, Debug)]
enum OperatorCommand {
    /// Create an operator API key and print it (shown only this once).
    CreateKey {
        /// A name to recognise the key by.
        #[arg(long, default_value = "operator")]
        name: String,
    },
}

fn main() -> ExitCode {
    outpost::panics::install_hook();
    let cli = Cli::parse();
    let listen = match &cli.command {
        Command::Serve { listen } | Command::Config { command: ConfigCommand::Check { listen } } => *listen,
        _ => None,
    };
    let load = || Config::load(cli.config.as_deref(), &Overrides { data_dir: cli.data.clone(), listen });
    match cli.command {
        Command::Version => {
            println!("outpost {}", outpost::VERSION);
            ExitCode::SUCCESS
        }
        Command::Generate { command } => generate(command).unwrap_or_else(|e| {
            say_err(&format!("error: {e}"));
            ExitCode::FAILURE
        }),
        Command::Openapi => {
            print!("{}", http::openapi_json());
            ExitCode::SUCCESS
        }
        Command::Config { command: ConfigCommand::Check { .. } } => match load() {
            Ok(c) => {
                print!("{}", c.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => config_failed(&e),
        },
        Command::Serve { .. } => match load() {
            Ok(c) => serve(c),
            Err(e) => config_failed(&e),
        },
        Command::Backup { out } => with_config(load(), |c| {
            let s = commands::backup(&c, &out)?;
            println!("backup written to {} ({} entries, {} bytes)", out.display(), s.entries, s.bytes);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Restore { from, force } => {
            let Some(data) = cli.data.clone() else {
                say_err("error: restore needs --data DIR (the data dir to restore into)");
                return ExitCode::from(2);
            };
            report(commands::restore(&from, &data, force).map(|s| {
                println!("restored {} entries into {} (new epoch {})", s.entries, data.display(), s.epoch);
                ExitCode::SUCCESS
            }))
        }
        Command::Audit { command: AuditCommand::Verify } => with_config(load(), |c| {
            let v = commands::audit_verify(&c)?;
            match v.first_broken {
                None => {
                    println!("audit chains verify: {} chains, {} records", v.orgs, v.records);
                    Ok(ExitCode::SUCCESS)
                }
                Some(b) => {
                    println!("audit chain BROKEN: organization {} at record {}: {}", b.org, b.n, b.reason);
                    Ok(ExitCode::FAILURE)
                }
            }
        }),
        Command::Fsck => with_config(load(), |c| {
            let r = commands::fsck(&c)?;
            println!(
                "fsck: {} files ({} bytes) checked, {} file records, {} unnamed on disk",
                r.blobs, r.bytes, r.assets, r.unnamed
            );
            for f in &r.findings {
                println!("DAMAGED: organization {}: {}: {}", f.org, f.what, f.problem);
            }
            Ok(if r.findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }),
        Command::Reindex => with_config(load(), |c| {
            let n = commands::reindex(&c)?;
            println!("search index rebuilt: {n} documents");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Space { json } => with_config(load(), |c| print_space(&c, json)),
        Command::Keys { command: KeysCommand::Rotate } => with_config(load(), |c| {
            let kid = commands::rotate_signing_key(&c)?;
            println!("new signing key {kid}");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Vault { command: VaultCommand::Rotate } => with_config(load(), |c| {
            let id = commands::rotate_vault(&c)?;
            println!("vault re-sealed under master key {id}");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Operator { command: OperatorCommand::CreateKey { name } } => with_config(load(), |c| {
            let (id, token) = commands::create_operator_key(&c, &name)?;
            if std::io::stdout().is_terminal() {
                say_err(&format!("created operator key {id}; it is shown only this once:"));
            }
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// Where a packaged install keeps things, appended to outpost.1.
const MAN_FILES: &str = r#".SH FILES
.TP
/etc/outpost/outpost.toml
The configuration the service reads: every key with its meaning and default.
.TP
/var/lib/outpost
The data directory: the store, the search index, recordings, the admin socket and the vault's
master key (master.key: keep a copy apart from the backups).
.TP
/usr/lib/systemd/system/outpost.service
The unit: Type=notify with a watchdog, hardened; logs go to the journal (journalctl -u outpost).
.SH EXAMPLES
.nf
sudo -u outpost outpost operator create-key --config /etc/outpost/outpost.toml
sudo -u outpost outpost backup --config /etc/outpost/outpost.toml --out /var/lib/outpost/x.backup
outpost config check --config /etc/outpost/outpost.toml
.fi
.SH "SEE ALSO"
systemctl(1), journalctl(1)
"#;

/// The operator documentation the packages ship, made from the command-line definition and the
/// configuration types themselves.
fn generate(what: GenerateCommand) -> Result<ExitCode, String> {
    let io = |e: std::io::Error| e.to_string();
    match what {
        GenerateCommand::Man { dir } => {
            // outpost.1 and one page per subcommand (outpost-operator-create-key.1, ...).
            clap_mangen::generate_to(Cli::command(), &dir).map_err(io)?;
            let main_page = dir.join("outpost.1");
            let mut page = std::fs::OpenOptions::new().append(true).open(&main_page).map_err(io)?;
            page.write_all(MAN_FILES.as_bytes()).map_err(io)?;
            println!("{}", main_page.display());
        }
        GenerateCommand::Completions { shell, dir } => {
            let path = clap_complete::generate_to(shell, &mut Cli::command(), "outpost", &dir).map_err(io)?;
            println!("{}", path.display());
        }
        GenerateCommand::Config => print!("{}", outpost::config_file::render_packaged().map_err(|e| e.to_string())?),
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(config: Config) -> ExitCode {
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            say_err(&format!("error: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| {
            outpost::RunError::Io(std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen)))
        })?;
        // Handlers are installed before the server announces readiness, so an early SIGTERM
        // already means a graceful stop.
        let stop = stop_signal()?;
        outpost::run(listener, config, stop).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "outpost failed");
            say_err(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Installs SIGTERM and SIGINT handlers; the future resolves on either.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn init_logging(config: &Config) {
    let mut filter = tracing_subscriber::EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| "info".into());
    // The search engine narrates every commit at info; keep its warnings unless asked for more.
    if !config.log.level.contains("tantivy") {
        if let Ok(d) = "tantivy=warn".parse() {
            filter = filter.add_directive(d);
        }
    }
    let json = match config.log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(|| LogOut)
        // A failed write is counted by `LogOut`; reporting it on stderr would fail the same way
        // when both go to the same full disk, and a failed report there panics.
        .log_internal_errors(false);
    if json {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}

/// Where log lines go: standard output, and a line that cannot be written (output closed, disk
/// full) is dropped and counted (`outpost_log_lines_dropped`), never an error that could stop
/// the server.
struct LogOut;

impl Write for LogOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stdout().write_all(buf).is_err() {
            outpost::metrics::log_line_dropped();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

/// A message for the operator on standard error; nothing to do when that cannot be written.
fn say_err(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

fn config_failed(e: &outpost::config::ConfigError) -> ExitCode {
    say_err(&format!("error: {e}"));
    ExitCode::from(2)
}

fn print_space(c: &Config, json: bool) -> Result<ExitCode, commands::CommandError> {
    let r = commands::space(c)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        print!("{}", space_table(&r));
    }
    Ok(ExitCode::SUCCESS)
}

/// The space report as a table: each table's entries, its bytes in pages and per entry, and how
/// those bytes divide into rows, the B-tree around them and room nothing fills.
fn space_table(r: &outpost::store::space::SpaceReport) -> String {
    use std::fmt::Write;
    let kib = |b: u64| b.div_ceil(1024);
    let mut out = format!(
        "{:<22} {:>10} {:>11} {:>11} {:>10} {:>11} {:>12}\n",
        "table", "entries", "pages KiB", "per entry", "rows KiB", "b-tree KiB", "unfilled KiB"
    );
    for t in r.tables.iter().filter(|t| t.entries > 0) {
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>11} {:>11} {:>10} {:>11} {:>12}",
            t.table,
            t.entries,
            kib(t.page_bytes()),
            t.page_bytes() / t.entries,
            kib(t.stored_bytes),
            kib(t.metadata_bytes),
            kib(t.fragmented_bytes),
        );
    }
    let _ = writeln!(
        out,
        "tables {} KiB; file {} KiB long, {} KiB on disk",
        kib(r.table_bytes()),
        kib(r.file_bytes),
        kib(r.disk_bytes)
    );
    out
}

fn with_config(
    config: Result<Config, outpost::config::ConfigError>,
    f: impl FnOnce(Config) -> Result<ExitCode, commands::CommandError>,
) -> ExitCode {
    match config {
        Ok(c) => report(f(c)),
        Err(e) => config_failed(&e),
    }
}

fn report(r: Result<ExitCode, commands::CommandError>) -> ExitCode {
    r.unwrap_or_else(|e| {
        say_err(&format!("error: {e}"));
        ExitCode::FAILURE
    })
}
