//! `gateway top`: what an operator watches during an incident, refreshed every second from the
//! gateway's own `/metrics` (rates are differences between two scrapes) and, with the admin
//! token, its callers and blocks.

use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyModifiers};
use hyper::Method;
use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
};
use serde_json::Value;

use super::{AdminClient, Samples};

/// One refresh's worth of figures.
#[derive(Default)]
struct View {
    error: Option<String>,
    requests_per_sec: f64,
    refused_per_sec: f64,
    total_requests: f64,
    open_connections: f64,
    open_streams: f64,
    xdp_drops_per_sec: f64,
    xdp_mode: String,
    decisions: Vec<(String, f64, f64)>,
    callers: Vec<(String, f64, f64)>,
    tools: Vec<(String, f64, f64)>,
    blocks: Vec<(String, String, String)>,
}

pub async fn run(client: AdminClient, interval: Duration) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = refresh_until_quit(&client, interval, &mut terminal).await;
    ratatui::restore();
    result
}

async fn refresh_until_quit(
    client: &AdminClient,
    interval: Duration,
    terminal: &mut ratatui::DefaultTerminal,
) -> anyhow::Result<()> {
    let mut previous: Option<Samples> = None;
    loop {
        let view = match client.call_raw(Method::GET, "/metrics", None).await {
            Ok((_, body)) => {
                let samples = Samples::parse(&String::from_utf8_lossy(&body));
                let mut view = compute(&samples, previous.as_ref(), interval);
                add_blocks(client, &mut view).await;
                previous = Some(samples);
                view
            }
            Err(err) => View {
                error: Some(format!("{err:#}")),
                ..View::default()
            },
        };
        terminal.draw(|frame| draw(frame, &view, interval))?;
        // Keys are checked every 50 ms until the next refresh.
        let mut waited = Duration::ZERO;
        while waited < interval {
            if event::poll(Duration::ZERO)?
                && let Event::Key(key) = event::read()?
                && (key.code == KeyCode::Char('q')
                    || key.code == KeyCode::Esc
                    || (key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL)))
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
    }
}

/// Per-label rates (per second since `previous`) and totals, busiest first.
fn ranked(
    now: &Samples,
    previous: Option<&Samples>,
    name: &str,
    label: &str,
    seconds: f64,
) -> Vec<(String, f64, f64)> {
    let before = previous.map(|samples| samples.sum_by(name, label));
    let mut rows: Vec<(String, f64, f64)> = now
        .sum_by(name, label)
        .into_iter()
        .map(|(key, total)| {
            let earlier = before
                .as_ref()
                .and_then(|before| before.get(&key).copied())
                .unwrap_or(total);
            (key, (total - earlier).max(0.0) / seconds, total)
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)));
    rows
}

fn compute(now: &Samples, previous: Option<&Samples>, interval: Duration) -> View {
    let seconds = interval.as_secs_f64();
    let requests = "mcp_gateway_requests_total";
    let rate =
        |total: f64, before: Option<f64>| (total - before.unwrap_or(total)).max(0.0) / seconds;
    let total_requests = now.sum(requests, |_, _| true);
    let refused = now.sum(requests, |key, value| {
        key != "decision" || value != "forwarded"
    });
    let drops = |samples: &Samples| {
        samples.sum("mcp_gateway_xdp_packets_total", |key, value| {
            key != "verdict" || value.starts_with("drop")
        })
    };
    let xdp_mode = now
        .sum_by("mcp_gateway_xdp_attached", "mode")
        .into_keys()
        .next()
        .unwrap_or_default();
    let mut callers = ranked(now, previous, requests, "caller", seconds);
    callers.retain(|(caller, _, _)| !caller.is_empty());
    View {
        error: None,
        requests_per_sec: rate(
            total_requests,
            previous.map(|p| p.sum(requests, |_, _| true)),
        ),
        refused_per_sec: rate(
            refused,
            previous.map(|p| {
                p.sum(requests, |key, value| {
                    key != "decision" || value != "forwarded"
                })
            }),
        ),
        total_requests,
        open_connections: now.sum("mcp_gateway_open_connections", |_, _| true),
        open_streams: now.sum("mcp_gateway_open_streams", |_, _| true),
        xdp_drops_per_sec: rate(drops(now), previous.map(drops)),
        xdp_mode,
        decisions: ranked(now, previous, requests, "decision", seconds),
        callers,
        tools: ranked(
            now,
            previous,
            "mcp_gateway_tool_calls_total",
            "tool",
            seconds,
        ),
        blocks: Vec::new(),
    }
}

/// The blocks in force, when the admin token lets us see them.
async fn add_blocks(client: &AdminClient, view: &mut View) {
    let Ok((status, Value::Array(blocks))) = client.call(Method::GET, "/api/v1/blocks", None).await
    else {
        return;
    };
    if !status.is_success() {
        return;
    }
    view.blocks = blocks
        .iter()
        .map(|block| {
            let text = |field: &str| block[field].as_str().unwrap_or("-").to_owned();
            let left = block["remaining_secs"]
                .as_u64()
                .map_or_else(|| "until removed".to_owned(), |secs| format!("{secs} s"));
            (
                text("target"),
                format!("{} ({})", text("reason"), text("origin")),
                left,
            )
        })
        .collect();
}

fn draw(frame: &mut Frame, view: &View, interval: Duration) {
    let [header, middle, bottom] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(6),
        Constraint::Min(5),
    ])
    .areas(frame.area());
    let mut lines = vec![Line::styled(
        format!(
            "mcp-gateway top: refreshed every {} s, q to quit",
            interval.as_secs()
        ),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    match &view.error {
        Some(error) => lines.push(Line::raw(format!("cannot read the gateway: {error}"))),
        None => {
            lines.push(Line::raw(format!(
                "requests/s {:.1}   refused/s {:.1}   requests total {:.0}",
                view.requests_per_sec, view.refused_per_sec, view.total_requests
            )));
            lines.push(Line::raw(format!(
                "connections {:.0}   streams {:.0}   blocks {}   xdp {} drops/s {:.1}",
                view.open_connections,
                view.open_streams,
                view.blocks.len(),
                view.xdp_mode,
                view.xdp_drops_per_sec
            )));
        }
    }
    frame.render_widget(Paragraph::new(lines), header);
    let [decisions, callers, tools] = Layout::horizontal([
        Constraint::Percentage(30),
        Constraint::Percentage(35),
        Constraint::Percentage(35),
    ])
    .areas(middle);
    frame.render_widget(ranked_table("Decisions", &view.decisions), decisions);
    frame.render_widget(ranked_table("Top callers", &view.callers), callers);
    frame.render_widget(ranked_table("Top tools", &view.tools), tools);
    let rows = view
        .blocks
        .iter()
        .map(|(target, why, left)| Row::new([target.clone(), why.clone(), left.clone()]));
    let blocks = Table::new(
        rows,
        [
            Constraint::Percentage(40),
            Constraint::Percentage(40),
            Constraint::Percentage(20),
        ],
    )
    .header(Row::new(["target", "reason (decided by)", "left"]))
    .block(Block::new().borders(Borders::ALL).title("Blocks"));
    frame.render_widget(blocks, bottom);
}

fn ranked_table<'a>(title: &'a str, rows: &[(String, f64, f64)]) -> Table<'a> {
    let rows: Vec<Row> = rows
        .iter()
        .map(|(name, rate, total)| {
            Row::new([name.clone(), format!("{rate:.1}/s"), format!("{total:.0}")])
        })
        .collect();
    Table::new(
        rows,
        [
            Constraint::Percentage(50),
            Constraint::Percentage(25),
            Constraint::Percentage(25),
        ],
    )
    .header(Row::new(["name", "rate", "total"]))
    .block(Block::new().borders(Borders::ALL).title(title))
}
