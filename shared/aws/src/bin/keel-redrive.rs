//! `keel-redrive --from DLQ_URL --to QUEUE_URL`: replays a dead-letter queue
//! into its queue once the cause of the failures is fixed (for example
//! `ActionsDeadLetterQueue` into `ActionsQueue`). Uses the usual AWS
//! credentials and region; every consumer is idempotent, so a message that
//! did get through before is not applied twice.

use std::collections::HashMap;

const USAGE: &str = "usage: keel-redrive --from DEAD_LETTER_QUEUE_URL --to QUEUE_URL";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let (Some(from), Some(to)) = (flag("--from"), flag("--to")) else {
        eprintln!("{USAGE}");
        return std::process::ExitCode::FAILURE;
    };
    let sdk = keel_aws::load_sdk_config().await;
    let queue = keel_aws::SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), HashMap::new(), HashMap::new());
    match queue.redrive(&from, &to).await {
        Ok(moved) => {
            println!("moved {moved} message(s) from {from} to {to}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel-redrive: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
