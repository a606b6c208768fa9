// Polling without pile-ups: the next call starts only after the last one ended, none while
// the tab is hidden, and it stops for good when the step says so. A failed step shows a banner and is tried again,
// backing off, so a restarting server is waited for, not hammered.

const banner = () => document.getElementById("banner");

export function poll(step, everyMs) {
  let timer = null;
  let stopped = false;
  let failures = 0;
  let running = false;
  let rerun = false;
  const run = async () => {
    timer = null;
    if (stopped) return;
    // A tab in the background asks nothing; it catches up as soon as it is shown again.
    if (document.hidden) {
      document.addEventListener("visibilitychange", run, { once: true });
      return;
    }
    if (running) {
      rerun = true;
      return;
    }
    running = true;
    rerun = false;
    let again = true;
    try {
      again = await step();
      failures = 0;
      banner().hidden = true;
    } catch (error) {
      failures += 1;
      banner().textContent = `Could not refresh: ${error.message}. Retrying…`;
      banner().hidden = false;
    } finally {
      running = false;
    }
    if (again === false) {
      stopped = true;
      return;
    }
    if (!stopped) {
      const wait = rerun ? 0 : Math.min(everyMs * 2 ** failures, 30_000);
      timer = setTimeout(run, wait);
    }
  };
  run();
  return {
    // Run now (after a user's action) rather than at the next tick; never twice at once:
    // while a step runs, the next one starts as soon as it ends.
    now() {
      if (stopped) return;
      if (timer) clearTimeout(timer);
      run();
    },
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
    },
  };
}
