//! The open loop's load generator: one thread, `epoll` and a `timerfd`, no runtime.
//!
//! Requests are due on a fixed schedule (Poisson by default) whatever the server
//! does; each goes out on an idle keep-alive connection, or waits for one in arrival
//! order, and its latency is measured from the time it was due. The thread sleeps
//! in `epoll_wait` until an answer arrives or the next request is due (to within
//! [`PACE_TICK`]), so pacing, sending and reading cost one thread and no cross-thread
//! wake-ups.
//!
//! Why not Tokio, as the closed loop: its timer rounds deadlines up to whole
//! milliseconds (requests went out 0.94 ms late at the median, in bursts), and a
//! pacer thread handing permits to a runtime cost ~17 µs of CPU per request plus a
//! tenth of a core for the pacer, on the same two cores as the server it measures.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::{Outcome, response_len};

/// When each request of an open loop is due, as offsets from its start.
///
/// Poisson arrivals by default (exponential gaps, as from many independent senders;
/// seeded, so every run and every server sees the same schedule), or evenly spaced
/// with `--arrivals uniform`.
pub struct Schedule(Vec<Duration>);

impl Schedule {
    pub fn new(rate: u64, seconds: u64, poisson: bool) -> Self {
        let n = (rate * seconds) as usize;
        if !poisson {
            return Self(
                (0..n as u64)
                    .map(|k| Duration::from_nanos(k * 1_000_000_000 / rate))
                    .collect(),
            );
        }
        // xorshift64*: a fixed seed, no dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut t = 0f64;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let u =
                ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            t += -u.ln() / rate as f64;
            out.push(Duration::from_secs_f64(t));
        }
        Self(out)
    }

    /// The offset of request `k`, or `None` past the end of the phase.
    fn at(&self, k: usize) -> Option<Duration> {
        self.0.get(k).copied()
    }
}

/// The generator sleeps at least this long when it waits only for the next request
/// to fall due, so it wakes at most ~10,000 times a second for pacing (at 20k/s a
/// wake-up per request would be as many again as the answers wake it); a request can
/// go out up to this much late, which the lateness line reports.
const PACE_TICK: Duration = Duration::from_micros(100);

/// How long answers to requests still in flight are awaited after the phase ends.
const DRAIN: Duration = Duration::from_secs(5);

/// The `epoll` token of the timer; connections use their index.
const TIMER: u64 = u64::MAX;

struct Conn {
    /// Its `epoll` token.
    token: u64,
    stream: TcpStream,
    /// Whether `epoll` also watches it for writability (a request only partly sent).
    watch_out: bool,
    /// The request in flight: its index, when it was due, and how much of it is sent.
    busy: Option<(usize, Instant, usize)>,
    buf: Vec<u8>,
}

struct Poller {
    epfd: RawFd,
    timer: RawFd,
}

impl Poller {
    fn new() -> Self {
        // SAFETY: plain syscalls creating new descriptors; results are checked.
        let (epfd, timer) = unsafe {
            (
                libc::epoll_create1(libc::EPOLL_CLOEXEC),
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                ),
            )
        };
        assert!(
            epfd >= 0 && timer >= 0,
            "epoll/timerfd: {}",
            std::io::Error::last_os_error()
        );
        let p = Self { epfd, timer };
        p.watch(timer, TIMER, libc::EPOLLIN as u32, libc::EPOLL_CTL_ADD);
        p
    }

    fn watch(&self, fd: RawFd, token: u64, events: u32, op: libc::c_int) {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` outlives the call; both descriptors are open.
        let rc = unsafe { libc::epoll_ctl(self.epfd, op, fd, &mut ev) };
        assert!(rc == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    }

    /// Arms the timer to fire once after `after` (at least 1 µs).
    fn arm(&self, after: Duration) {
        let after = after.max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not requested.
        unsafe { libc::timerfd_settime(self.timer, 0, &spec, std::ptr::null_mut()) };
    }

    fn wait(&self, events: &mut [libc::epoll_event]) -> usize {
        // SAFETY: `events` is a valid, writable buffer of the length passed.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                1000,
            )
        };
        n.max(0) as usize
    }

    fn clear_timer(&self) {
        let mut ticks = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `ticks` from the open timerfd.
        unsafe { libc::read(self.timer, ticks.as_mut_ptr().cast(), 8) };
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: closes descriptors this struct created and owns.
        unsafe {
            libc::close(self.timer);
            libc::close(self.epfd);
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.set_nonblocking(true).expect("nonblocking");
    stream
}

/// Open loop at `rate` requests/s for `seconds` over `connections` connections.
pub fn run(
    addr: SocketAddr,
    reqs: &[Vec<u8>],
    connections: usize,
    seconds: u64,
    rate: u64,
    poisson: bool,
) -> Outcome {
    let schedule = Schedule::new(rate, seconds, poisson);
    let poller = Poller::new();
    let mut conns: Vec<Conn> = (0..connections)
        .map(|i| {
            let stream = connect(addr);
            poller.watch(
                stream.as_raw_fd(),
                i as u64,
                libc::EPOLLIN as u32,
                libc::EPOLL_CTL_ADD,
            );
            Conn {
                token: i as u64,
                stream,
                watch_out: false,
                busy: None,
                buf: Vec::with_capacity(1024),
            }
        })
        .collect();
    let mut idle: Vec<usize> = (0..connections).rev().collect();
    let mut waiting: VecDeque<(usize, Instant)> = VecDeque::new();
    let mut out = Outcome {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(schedule.0.len()),
        timeline: Vec::with_capacity(schedule.0.len()),
        wake_late: Vec::with_capacity(schedule.0.len()),
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 128];
    let mut chunk = [0u8; 4096];
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut due = 0usize;
    let mut in_flight = 0usize;
    loop {
        let now = Instant::now();
        // Release every request now due: onto an idle connection at once (its
        // lateness is the generator's), or behind the others waiting for one. (Until
        // the end, a connection is idle only while no request waits.)
        while let Some(at) = schedule.at(due).map(|d| start + d).filter(|&at| at <= now) {
            if at >= end {
                due = usize::MAX;
                break;
            }
            match idle.pop() {
                Some(c) => {
                    out.wake_late.push(micros(now - at));
                    send(&poller, &mut conns[c], reqs, due, at);
                    in_flight += 1;
                }
                None => waiting.push_back((due, at)),
            }
            due += 1;
        }
        let next = schedule.at(due).map(|d| start + d).filter(|&at| at < end);
        if next.is_none() && (in_flight == 0 || now >= end + DRAIN) {
            break;
        }
        if let Some(at) = next {
            poller.arm(at.saturating_duration_since(now).max(PACE_TICK));
        }
        let n = poller.wait(&mut events);
        for ev in &events[..n] {
            let token = ev.u64;
            if token == TIMER {
                poller.clear_timer();
                continue;
            }
            let c = token as usize;
            let conn = &mut conns[c];
            if ev.events & libc::EPOLLOUT as u32 != 0
                && let Some((k, at, _)) = conn.busy
            {
                send(&poller, conn, reqs, k, at);
            }
            if ev.events & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                continue;
            }
            let done = match conn.stream.read(&mut chunk) {
                Ok(0) => Err(()),
                Ok(n) => {
                    conn.buf.extend_from_slice(&chunk[..n]);
                    match response_len(&conn.buf) {
                        Some((status, len)) if conn.buf.len() >= len => Ok(Some(status)),
                        _ => Ok(None),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
                Err(_) => Err(()),
            };
            let finished = match done {
                Ok(None) => continue,
                Ok(Some(status)) => {
                    let (_, at, _) = conn.busy.take().expect("an answer to a request in flight");
                    let us = micros(at.elapsed());
                    if status == 200 {
                        out.ok += 1;
                        out.latencies.push(us);
                        out.timeline.push(((at - start).as_millis() as u32, us));
                    } else {
                        out.errors += 1;
                    }
                    true
                }
                Err(()) => {
                    // The server closed the connection: count the request, reconnect.
                    out.errors += u64::from(conn.busy.take().is_some());
                    poller.watch(conn.stream.as_raw_fd(), 0, 0, libc::EPOLL_CTL_DEL);
                    conn.stream = connect(addr);
                    conn.watch_out = false;
                    poller.watch(
                        conn.stream.as_raw_fd(),
                        conn.token,
                        libc::EPOLLIN as u32,
                        libc::EPOLL_CTL_ADD,
                    );
                    true
                }
            };
            if finished {
                in_flight -= 1;
                conn.buf.clear();
                match waiting.pop_front() {
                    Some((k, at)) if Instant::now() < end => {
                        send(&poller, conn, reqs, k, at);
                        in_flight += 1;
                    }
                    _ => idle.push(c),
                }
            }
        }
    }
    out.errors += in_flight as u64;
    out.elapsed = start.elapsed().min(Duration::from_secs(seconds));
    out.latencies.sort_unstable();
    out.wake_late.sort_unstable();
    out
}

/// Sends (the rest of) request `k` on `conn`; what the socket does not take now goes
/// when `epoll` reports it writable.
fn send(poller: &Poller, conn: &mut Conn, reqs: &[Vec<u8>], k: usize, at: Instant) {
    let req = &reqs[k % reqs.len()];
    let mut sent = conn.busy.map_or(0, |(_, _, s)| s);
    while sent < req.len() {
        match conn.stream.write(&req[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => break, // the read side sees the closed connection
        }
    }
    conn.busy = Some((k, at, sent));
    let watch_out = sent < req.len();
    if watch_out != conn.watch_out {
        let events = libc::EPOLLIN as u32 | if watch_out { libc::EPOLLOUT as u32 } else { 0 };
        poller.watch(
            conn.stream.as_raw_fd(),
            conn.token,
            events,
            libc::EPOLL_CTL_MOD,
        );
        conn.watch_out = watch_out;
    }
}

/// A duration in whole microseconds, saturating at `u32::MAX` (~71 minutes).
pub fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}
