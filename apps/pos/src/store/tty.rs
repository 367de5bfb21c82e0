//! The interactive till: a person types (or a barcode scanner types) one
//! line per item and sees the outcome and the stock left at once.
//!
//! | line | does |
//! |---|---|
//! | `SKU` | sells 1 (a scan) |
//! | `SKU QTY` | sells QTY |
//! | `? SKU` | shows the stock, sells nothing |
//! | `return ORDER QTY` | takes back QTY units of this store's order ORDER |
//! | `help` | this list |
//! | `quit` (or end of input) | stops the till |
//!
//! Each answer is one line: `OK`, `REFUSED` or `WAIT` (sent, not decided
//! yet), the sentence, and the stock it leaves, marked `(stale …)` while
//! the store is cut off from the appliance. The prompt is `> `.

use std::io::{BufRead, Write};
use std::time::Duration;

use super::{Answer, Ask, Job, JobSender};

/// Longest line read (a scanner's line is far shorter).
pub const LINE_BYTES_MAX: usize = 256;

/// What one input line asks, or what to tell the person.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Ask(Ask),
    Help,
    Quit,
    Empty,
    /// Not understood: the reason.
    Bad(String),
}

/// Parses one input line.
pub fn parse(line: &str) -> Line {
    let words: Vec<&str> = line.split_whitespace().collect();
    let qty = |word: &str| {
        word.parse::<u32>()
            .ok()
            .filter(|&qty| qty > 0)
            .ok_or_else(|| format!("{word:?} is not a quantity (a whole number above 0)"))
    };
    match words.as_slice() {
        [] => Line::Empty,
        ["help" | "h"] => Line::Help,
        ["quit" | "exit" | "q"] => Line::Quit,
        ["?", sku] | ["stock", sku] => Line::Ask(Ask::Stock {
            sku: (*sku).to_string(),
        }),
        ["return", order, count] => match (order.parse::<u64>(), qty(count)) {
            (Ok(order_id), Ok(qty)) => Line::Ask(Ask::Return { order_id, qty }),
            (Err(_), _) => Line::Bad(format!("{order:?} is not an order number")),
            (_, Err(reason)) => Line::Bad(reason),
        },
        [sku] => Line::Ask(Ask::Sale {
            sku: (*sku).to_string(),
            qty: 1,
        }),
        [sku, count] => match qty(count) {
            Ok(qty) => Line::Ask(Ask::Sale {
                sku: (*sku).to_string(),
                qty,
            }),
            Err(reason) => Line::Bad(reason),
        },
        _ => Line::Bad("expected `SKU`, `SKU QTY`, `? SKU` or `return ORDER QTY`".into()),
    }
}

const HELP: &str = "SKU: sell one | SKU QTY: sell QTY | ? SKU: stock | \
                    return ORDER QTY: take back | quit";

/// One line for the person: the outcome and the stock.
pub fn render(answer: &Answer) -> String {
    let word = match answer.status {
        200 | 201 => "OK",
        202 => "WAIT",
        _ => "REFUSED",
    };
    let message = answer.body["message"].as_str().unwrap_or("(no message)");
    let mut line = format!("{word} {message}");
    if answer.body["stale"] == true {
        match answer.body["link_down_s"].as_f64() {
            Some(seconds) => line.push_str(&format!(
                " (stale: cut off from the appliance for {seconds:.0} s)"
            )),
            None => line.push_str(" (stale)"),
        }
    }
    line
}

/// Reads lines from `input` until `quit` or its end, asks the node through
/// `jobs`, and writes each answer to `output`. `wait` bounds the wait for
/// one answer.
pub fn run(
    input: impl BufRead,
    mut output: impl Write,
    jobs: &JobSender,
    wait: Duration,
) -> std::io::Result<()> {
    writeln!(output, "till ready: {HELP}")?;
    write!(output, "> ")?;
    output.flush()?;
    let mut input = input.take(0);
    loop {
        let mut line = String::new();
        input.set_limit(LINE_BYTES_MAX as u64 + 1);
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let reply = if line.len() > LINE_BYTES_MAX && !line.ends_with('\n') {
            skip_rest_of_line(&mut input)?;
            format!("REFUSED the line is over {LINE_BYTES_MAX} bytes")
        } else {
            match parse(&line) {
                Line::Quit => return Ok(()),
                Line::Empty => String::new(),
                Line::Help => HELP.to_string(),
                Line::Bad(reason) => format!("REFUSED {reason}"),
                Line::Ask(ask) => render(&ask_node(jobs, ask, wait)),
            }
        };
        if !reply.is_empty() {
            writeln!(output, "{reply}")?;
        }
        write!(output, "> ")?;
        output.flush()?;
    }
}

fn skip_rest_of_line(input: &mut std::io::Take<impl BufRead>) -> std::io::Result<()> {
    loop {
        let mut rest = String::new();
        input.set_limit(LINE_BYTES_MAX as u64);
        if input.read_line(&mut rest)? == 0 || rest.ends_with('\n') {
            return Ok(());
        }
    }
}

fn ask_node(jobs: &JobSender, ask: Ask, wait: Duration) -> Answer {
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let no_answer = |message: &str| Answer {
        status: 503,
        body: serde_json::json!({ "message": message }),
        retry_after_s: None,
    };
    if jobs
        .send(Job {
            ask,
            reply,
            key: None,
        })
        .is_err()
    {
        return no_answer("the store node is stopping");
    }
    answer
        .recv_timeout(wait)
        .unwrap_or_else(|_| no_answer("the store node did not answer in time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_sales_reads_and_returns() {
        let sale = |sku: &str, qty| {
            Line::Ask(Ask::Sale {
                sku: sku.into(),
                qty,
            })
        };
        assert_eq!(parse("MUG\n"), sale("MUG", 1));
        assert_eq!(parse("  MUG   3 "), sale("MUG", 3));
        assert_eq!(parse("? TEE"), Line::Ask(Ask::Stock { sku: "TEE".into() }));
        assert_eq!(
            parse("return 17 2"),
            Line::Ask(Ask::Return {
                order_id: 17,
                qty: 2
            })
        );
        assert_eq!(parse(""), Line::Empty);
        assert_eq!(parse("quit"), Line::Quit);
        assert!(matches!(parse("MUG 0"), Line::Bad(_)));
        assert!(matches!(parse("MUG -2"), Line::Bad(_)));
        assert!(matches!(parse("MUG 99999999999"), Line::Bad(_)));
        assert!(matches!(parse("a b c d"), Line::Bad(_)));
    }

    #[test]
    fn an_overlong_line_is_refused_and_the_next_one_read() {
        let (jobs, mut asked) = crate::store::job_queue(4).unwrap();
        let mut input = "x".repeat(LINE_BYTES_MAX * 3);
        input.push_str("\nhelp\nquit\n");
        let mut output = Vec::new();
        run(
            input.as_bytes(),
            &mut output,
            &jobs,
            Duration::from_millis(10),
        )
        .unwrap();
        let output = String::from_utf8(output).unwrap();
        assert!(output.contains("REFUSED the line is over"), "{output}");
        assert!(output.contains("SKU QTY: sell QTY"), "{output}");
        assert!(asked.try_recv().is_none(), "nothing asked");
    }
}
