//! `authflow`: parse the command line, set up logging, load the configuration, run.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use authflow::app::{shutdown_signal, App, Services};
use authflow::config::{Config, LogFormat};

/// jemalloc for every allocation of the process, SQLite's included. Its background thread
/// gives freed memory back to the system within seconds (the decay is set in
/// `.cargo/config.toml`). glibc's per-thread arenas kept about 20 MiB of a storm's freed
/// memory for good.
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "authflow",
    version,
    about = "Self-hosted authentication service"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Create an administrator, or make the account with this username one; prints its id.
    /// The password comes from ADMIN_PASSWORD, else it is asked for without echo.
    CreateAdmin {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Time the password hash on this machine (for capacity planning).
    #[command(hide = true)]
    HashBenchmark {
        #[arg(long, default_value_t = 20)]
        rounds: u32,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("authflow: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::HashBenchmark { rounds } => {
            authflow::auth::password::benchmark(rounds);
            Ok(())
        }
        Command::CreateAdmin {
            username,
            email,
            name,
        } => create_admin(config, &username, &email, name.as_deref()).await,
        Command::Migrate => authflow::store::connect(&config)
            .await
            .map(|_| tracing::info!("migrations applied"))
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("authflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    authflow::server::raise_open_file_limit();
    let app = App::build(config).await?;
    tracing::info!(
        port = app.port(),
        https = app.serves_tls(),
        redirect_port = app.redirect_port(),
        "authflow listening"
    );
    app.run_until_stopped(shutdown_signal()).await
}

fn admin_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if let Ok(password) = std::env::var("ADMIN_PASSWORD") {
        return Ok(password);
    }
    const NO_TERMINAL: &str =
        "no terminal to ask for the administrator's password: set ADMIN_PASSWORD";
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(NO_TERMINAL);
    }
    let ask = |prompt: &str| rpassword::prompt_password(prompt).context(NO_TERMINAL);
    let password = ask("Password for the administrator: ")?;
    let again = ask("Once more: ")?;
    anyhow::ensure!(password == again, "the two passwords differ");
    Ok(password)
}

async fn create_admin(
    config: Config,
    username: &str,
    email: &str,
    name: Option<&str>,
) -> anyhow::Result<()> {
    let services = Services::connect(config).await?;
    let auth = &services.auth;
    if let Some(user) = auth
        .admin()
        .promote_to_admin(username)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        eprintln!(
            "authflow: {} already exists and is now an administrator; its password and email are unchanged",
            user.username
        );
        println!("{}", user.uid);
        return Ok(());
    }
    let password = admin_password()?;
    match auth
        .admin()
        .create_admin(username, email, name, &password)
        .await
    {
        Ok(user) => {
            tracing::info!(user = %user.uid, "administrator created");
            println!("{}", user.uid);
            Ok(())
        }
        Err(authflow::error::Error::Validation(details)) => {
            for d in details {
                eprintln!("{}: {}", d.field, d.message);
            }
            anyhow::bail!("the administrator was not created")
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
