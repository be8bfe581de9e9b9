//! `keel`'s commands and flags.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

pub const EXAMPLES: &str = "\
Examples:
  export KEEL_KEY=$(cat .keel/admin.key)
  keel tenants create acme --name Acme
  keel keys create acme ann --role member --group staff
  KEEL_KEY=keel_acme_… keel documents put docs/          # every file in the folder
  keel ask \"How long do refunds take?\"
  keel actions list --status pending_approval
  keel actions reject act_01… --reason \"duplicate order\"
  keel audit export audit.jsonl
  keel dlq redrive ingest --data-dir .keel                # the local stack's dead letters
  keel dlq redrive actions --from \"$DLQ_URL\" --to \"$QUEUE_URL\"   # AWS

Exit codes: 0 done; 1 the API failed or answered unexpectedly; 2 bad usage;
3 not signed in or not allowed (401, 403); 4 not found; 5 conflict (409);
6 refused input (400, 413, 422); 7 the API cannot be reached.";

/// Keel's admin command line, over the public HTTP API.
#[derive(Parser, Debug)]
#[command(name = "keel", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// The API's base URL.
    #[arg(long, env = "KEEL_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// A file holding the key or token (otherwise KEEL_KEY).
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
    /// Print the API's JSON answers, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Tenants (platform admin; a tenant's admins may show theirs).
    #[command(subcommand)]
    Tenants(Tenants),
    /// A tenant's API keys.
    #[command(subcommand)]
    Keys(Keys),
    /// Documents: put from files or a folder, delete, search.
    #[command(subcommand)]
    Documents(Documents),
    /// Ask a question; print the cited answer or the refusal.
    Ask {
        question: String,
    },
    /// Tools: register from a JSON file, list.
    #[command(subcommand)]
    Tools(Tools),
    /// Cedar policies: put from a file, show.
    #[command(subcommand)]
    Policies(Policies),
    /// Actions: list, show, approve, reject, undo.
    #[command(subcommand)]
    Actions(Actions),
    /// The decision log: verify, export.
    #[command(subcommand)]
    Audit(Audit),
    /// Usage and cost over days (default: this month).
    Usage {
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
    },
    /// Dead-letter queues.
    #[command(subcommand)]
    Dlq(Dlq),
    /// Who the key or token is.
    Whoami,
    /// Development: create every resource the template declares on a local
    /// AWS stand-in (moto server), seed what events/ expects, and print the
    /// environment for `cargo lambda watch` (scripts/dev.sh runs it all).
    Dev {
        /// The stand-in's URL; only loopback addresses are accepted.
        #[arg(long)]
        endpoint: String,
        /// Prefix of the resources' names.
        #[arg(long, default_value = "keel")]
        prefix: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Tenants {
    Create {
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        plan: Option<String>,
    },
    Show {
        id: String,
    },
    /// Change settings: a JSON object of the fields to change.
    Patch {
        id: String,
        /// e.g. '{"rate_limit_per_minute": 1200}'
        changes: String,
    },
    /// Suspend a tenant: its keys stop working at once.
    Suspend {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Keys {
    Create {
        tenant: String,
        principal: String,
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[arg(long = "group")]
        groups: Vec<String>,
        /// RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
    },
    List {
        tenant: String,
    },
    Revoke {
        tenant: String,
        key_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Documents {
    /// Put a file (its name without extension is the document id) or every file of a folder.
    Put {
        path: PathBuf,
        /// Groups that may read it (default: every principal of the tenant).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        source: Option<String>,
    },
    Delete {
        id: String,
    },
    Search {
        query: String,
        #[arg(long, default_value_t = 5)]
        k: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum Tools {
    /// Register a tool (a new version) from a JSON file.
    Put { name: String, file: PathBuf },
    List,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PolicyMode {
    Enforced,
    Shadow,
}

#[derive(Subcommand, Debug)]
pub enum Policies {
    /// Replace a policy set with a Cedar file's text.
    Put { mode: PolicyMode, file: PathBuf },
    Show,
}

#[derive(Subcommand, Debug)]
pub enum Actions {
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    Show {
        id: String,
    },
    Approve {
        id: String,
    },
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
    Undo {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Audit {
    /// Verify the tenant's chain on the server, or (--offline FILE) an export, with no server at all.
    Verify {
        /// A JSON Lines export (`keel audit export`) to verify here.
        #[arg(long)]
        offline: Option<PathBuf>,
    },
    /// Write the decision log as JSON Lines to a file.
    Export {
        file: PathBuf,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum QueueArg {
    Ingest,
    Audit,
    Actions,
}

#[derive(Subcommand, Debug)]
pub enum Dlq {
    /// Move dead letters back to their queue: the local stack's (--data-dir) or AWS's (--from, --to).
    Redrive(Redrive),
}

#[derive(Args, Debug)]
pub struct Redrive {
    pub queue: QueueArg,
    /// The local stack's data directory (stop keel-local first: one process per directory).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub data_dir: Option<PathBuf>,
    /// AWS: the dead-letter queue's URL.
    #[arg(long, requires = "to")]
    pub from: Option<String>,
    /// AWS: the queue's URL.
    #[arg(long, requires = "from")]
    pub to: Option<String>,
}
