"""The web dashboard in headless Chromium, against a broker process with its dashboard on
and real worker processes: what an operator sees and does, and what a `read` token and a
hostile payload cannot do."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.dashboard import (
    CHROMIUM,
    Stack,
    ThreadedClient,
    cpu_seconds,
    screenshot,
    sign_in,
    start_stack,
)
from tests.support.processes import stop_all
from worker_sdk import RetryPolicy, TaskState

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'
WAIT_S = 20.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("dashboard"))
    try:
        client = ThreadedClient(running.address)
        try:
            deadline = time.monotonic() + WAIT_S
            while len(client.list_workers()) < len(running.workers):
                assert time.monotonic() < deadline, f"workers did not connect\n{running.logs()}"
                time.sleep(0.05)
        finally:
            client.close()
        yield running
    finally:
        stop_all([*running.workers, running.broker])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[ThreadedClient]:
    threaded = ThreadedClient(stack.address)
    yield threaded
    threaded.close()


@pytest.fixture
def admin(browser: Browser, stack: Stack) -> Iterator[Page]:
    page = sign_in(browser, stack.url, stack.admin_token)
    yield page
    page.context.close()


@pytest.fixture
def reader(browser: Browser, stack: Stack) -> Iterator[Page]:
    page = sign_in(browser, stack.url, stack.read_token)
    yield page
    page.context.close()


def until_terminal(client: ThreadedClient, task_id: str) -> TaskState:
    state: TaskState = client.wait(task_id, timeout=WAIT_S).state
    return state


def test_overview_shows_each_pool_and_updates_live(
    admin: Page, client: ThreadedClient, stack: Stack
) -> None:
    waiting = [client.submit("echo", b"x", pool="batch") for _ in range(3)]
    done = client.submit("echo", b"y")
    assert until_terminal(client, done) is TaskState.SUCCEEDED
    admin.goto(f"{stack.url}/")
    batch = admin.locator("#pools-table tr[data-pool=batch]")
    default = admin.locator("#pools-table tr[data-pool=default]")
    expect(batch.locator("td.pending")).to_have_text("3")
    expect(batch.locator("td.workers")).to_have_text("0")
    expect(default.locator("td.workers")).to_have_text("2")
    expect(default.locator("td.capacity")).to_have_text("4")
    expect(default.locator("td.strategy")).to_contain_text("round_robin")
    # The numbers follow the broker without a reload.
    waiting.append(client.submit("echo", b"x", pool="batch"))
    expect(batch.locator("td.pending")).to_have_text("4", timeout=WAIT_S * 1000)
    expect(batch.locator("td.oldest")).not_to_have_text("0")
    expect(admin.locator("div.chart canvas").first).to_be_visible()
    for task_id in waiting:
        client.cancel(task_id)


def test_a_failed_tasks_page_shows_its_error_and_traceback(
    admin: Page, client: ThreadedClient, stack: Stack
) -> None:
    task_id = client.submit("boom", b"disk full on /var/spool")
    assert until_terminal(client, task_id) is TaskState.FAILED
    admin.goto(f"{stack.url}/tasks/{task_id}")
    expect(admin.locator("#error .error-type")).to_have_text("ValueError")
    expect(admin.locator("#error .error-message")).to_have_text("disk full on /var/spool")
    traceback = admin.locator("#traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text('raise ValueError(ctx.payload.decode(errors="replace"))')
    screenshot(admin, "task-failed")
    admin.goto(f"{stack.url}/tasks?state=FAILED")
    expect(admin.locator(f"#tasks-table tr[data-task='{task_id}']")).to_contain_text("ValueError")
    screenshot(admin, "tasks")


def test_a_pending_unplaceable_tasks_page_shows_why_it_waits(
    admin: Page, client: ThreadedClient, stack: Stack
) -> None:
    task_id = client.submit("echo", b"needs a gpu", require={"gpu": "h100"})
    deadline = time.monotonic() + WAIT_S
    while not (info := client.get(task_id)).placement_note:
        assert time.monotonic() < deadline, "the broker gave no placement note"
        time.sleep(0.05)
    assert info.state is TaskState.PENDING
    admin.goto(f"{stack.url}/tasks/{task_id}")
    note = admin.locator("#placement-note")
    expect(note).to_contain_text(info.placement_note)
    expect(note).to_contain_text("gpu")
    expect(note.locator(".unplaceable")).to_have_text("(no connected worker can take it)")
    expect(admin.locator("dl.placement")).to_contain_text("gpu=h100")
    screenshot(admin, "task-unplaceable")
    client.cancel(task_id)


def test_cordon_from_the_workers_page_stops_assignments_to_that_worker(
    admin: Page, client: ThreadedClient, stack: Stack
) -> None:
    admin.goto(f"{stack.url}/workers")
    row = admin.locator("#workers-table tr[data-worker=w-a]")
    row.locator("button[name=cordon]").click()
    expect(admin.locator(".flash")).to_have_text("cordon: w-a")
    expect(row.locator("td.state")).to_have_text("cordoned")
    try:
        ids = [client.submit("echo", str(n).encode()) for n in range(8)]
        finished = client.wait_many(ids, timeout=WAIT_S)
        assert {t.state for t in finished} == {TaskState.SUCCEEDED}
        assert {t.worker_id for t in finished} == {"w-b"}
        screenshot(admin, "workers")
    finally:
        admin.goto(f"{stack.url}/workers")
        row.locator("button[name=uncordon]").click()
    expect(row.locator("td.state")).to_have_text("serving")
    # Uncordoned, it takes work again: the round robin reaches both.
    ids = [client.submit("echo", str(n).encode()) for n in range(8)]
    assert {t.worker_id for t in client.wait_many(ids, timeout=WAIT_S)} == {"w-a", "w-b"}


def test_retry_from_the_dead_letter_page_runs_the_task_again(
    admin: Page, client: ThreadedClient, stack: Stack
) -> None:
    stack.fail_while.touch()
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)
    task_id = client.submit("flaky", b"", retry=retry)
    assert until_terminal(client, task_id) is TaskState.DEAD_LETTER
    stack.fail_while.unlink()
    admin.goto(f"{stack.url}/dead-letter")
    row = admin.locator(f"#dead-letter-table tr[data-task='{task_id}']")
    expect(row).to_contain_text("RuntimeError: the downstream service is down")
    screenshot(admin, "dead-letter")
    row.locator("button[name=retry]").click()
    expect(admin.locator(".flash")).to_have_text("1 task(s) sent round again")
    info = client.wait(task_id, timeout=WAIT_S)
    assert (info.state, info.result) == (TaskState.SUCCEEDED, b"ok now")
    expect(admin.locator(f"#dead-letter-table tr[data-task='{task_id}']")).to_have_count(0)


def test_a_read_token_sees_but_cannot_act(
    reader: Page, client: ThreadedClient, stack: Stack
) -> None:
    reader.goto(f"{stack.url}/workers")
    row = reader.locator("#workers-table tr[data-worker=w-a]")
    expect(row.locator("td.state")).to_have_text("serving")
    expect(reader.locator("#workers-table button")).to_have_count(0)
    csrf = reader.locator("meta[name=csrf-token]").get_attribute("content")
    assert csrf
    # Forged by hand, with a valid CSRF token: refused for the role.
    answer = reader.request.post(
        f"{stack.url}/workers/w-a/cordon", form={"csrf_token": csrf}, max_redirects=0
    )
    assert answer.status == 403
    assert "admin role" in answer.text()
    assert not any(w.cordoned for w in client.list_workers())
    reader.goto(f"{stack.url}/dead-letter")
    expect(reader.locator("#dead-letter-table button")).to_have_count(0)
    reader.goto(f"{stack.url}/pools/default")
    expect(reader.locator("form.pool-edit button")).to_have_count(0)


def test_an_action_without_the_sessions_csrf_token_is_refused(
    admin: Page, client: ThreadedClient, stack: Stack
) -> None:
    forms: list[dict[str, str | float | bool]] = [{}, {"csrf_token": "forged"}]
    for form in forms:
        answer = admin.request.post(f"{stack.url}/workers/w-a/cordon", form=form, max_redirects=0)
        assert answer.status == 403
    assert not any(w.cordoned for w in client.list_workers())


def test_a_hostile_payload_error_and_label_are_shown_as_text(
    admin: Page, client: ThreadedClient, stack: Stack
) -> None:
    echoed = client.submit("echo", HOSTILE.encode())
    failed = client.submit("boom", HOSTILE.encode())
    assert until_terminal(client, echoed) is TaskState.SUCCEEDED
    assert until_terminal(client, failed) is TaskState.FAILED
    admin.goto(f"{stack.url}/tasks/{echoed}")
    expect(admin.locator("#payload pre")).to_have_text(HOSTILE)
    expect(admin.locator("#result pre")).to_have_text(HOSTILE)
    admin.goto(f"{stack.url}/tasks/{failed}")
    expect(admin.locator("#error .error-message")).to_have_text(HOSTILE)
    admin.goto(f"{stack.url}/tasks?type=boom")
    expect(admin.locator(f"tr[data-task='{failed}'] td.note")).to_contain_text("<script>")
    admin.goto(f"{stack.url}/workers")
    expect(admin.locator("tr[data-worker=w-a] td.labels")).to_contain_text("owner=<b>ops</b>")
    assert admin.locator("script:not([src])").count() == 0
    assert admin.locator("main img, main b").count() == 0
    assert admin.title() != "pwned"


def test_binary_payloads_are_shown_as_a_bounded_hex_dump(
    admin: Page, client: ThreadedClient, stack: Stack
) -> None:
    task_id = client.submit("echo", bytes(range(256)) * 40, pool="batch")
    admin.goto(f"{stack.url}/tasks/{task_id}")
    expect(admin.locator("#payload .size")).to_have_text("10240 bytes, binary, first part shown")
    dump = admin.locator("#payload pre").inner_text()
    assert dump.startswith("00000000  00 01 02 03")
    assert len(dump.splitlines()) == 32  # 512 bytes, 16 a line
    client.cancel(task_id)


def test_signing_in_needs_a_known_token_and_pages_carry_security_headers(
    browser: Browser, stack: Stack
) -> None:
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(f"{stack.url}/workers")
    assert page.url == f"{stack.url}/login"
    assert response is not None
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self';" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    page.fill("input[name=token]", "not-a-token")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_have_text("Unknown token.")
    page.fill("input[name=token]", stack.read_token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.url}/")
    (cookie,) = context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    context.close()


def test_a_pool_edit_is_validated_and_audited(admin: Page, stack: Stack) -> None:
    admin.goto(f"{stack.url}/pools/batch")
    admin.fill("input[name=max_queue]", "-5")
    admin.click("form.pool-edit button[type=submit]")
    expect(admin.locator(".error")).to_contain_text("max_queue")
    admin.fill("input[name=max_queue]", "250")
    admin.click("form.pool-edit button[type=submit]")
    expect(admin.locator(".flash")).to_have_text("pool batch updated")
    expect(admin.locator("#pools-settings tr[data-pool=batch]")).to_contain_text("250")
    screenshot(admin, "pools")
    admin.goto(f"{stack.url}/audit?pool=batch")
    entry = admin.locator("#audit-table tbody tr").first
    expect(entry).to_contain_text("dashboard:ops")
    expect(entry.locator("td.fields")).to_have_text("max_queue")
    screenshot(admin, "audit")
    admin.goto(f"{stack.url}/metrics?pool=default&range=1h")
    expect(admin.locator("div.chart canvas").first).to_be_visible()
    screenshot(admin, "metrics")


CPU_WINDOW_S = 10.0
CPU_BOUND = 0.01  # of one core: what an open dashboard may add to the broker


@pytest.mark.timeout(120)
def test_an_open_dashboard_costs_the_broker_under_one_percent_of_a_core(
    browser: Browser, stack: Stack
) -> None:
    pid = stack.broker.popen.pid

    def cpu_share(page: Page | None = None) -> float:
        before, started = cpu_seconds(pid), time.monotonic()
        if page is None:
            time.sleep(CPU_WINDOW_S)
        else:  # lets Playwright see the page's requests meanwhile
            page.wait_for_timeout(CPU_WINDOW_S * 1000)
        return (cpu_seconds(pid) - before) / (time.monotonic() - started)

    idle = cpu_share()
    page = sign_in(browser, stack.url, stack.admin_token)
    try:
        polled: list[str] = []
        complaints: list[str] = []  # script errors, and what the CSP refused
        page.on("request", lambda request: polled.append(request.url))
        page.on(
            "console",
            lambda message: complaints.append(message.text) if message.type == "error" else None,
        )
        page.on("pageerror", lambda error: complaints.append(str(error)))
        page.reload()
        page.wait_for_load_state("networkidle")
        polled.clear()
        watched = cpu_share(page)
        # The page was live all along: it polled the overview and refreshed its charts.
        assert sum("/live/overview" in url for url in polled) >= CPU_WINDOW_S / 2 - 1
        assert any("/api/history" in url for url in polled)
        assert complaints == []
        screenshot(page, "overview")
    finally:
        page.context.close()
    added = watched - idle
    print(f"broker CPU: idle {idle:.2%}, one dashboard open {watched:.2%}, added {added:.2%}")
    assert added < CPU_BOUND, f"idle {idle:.2%}, with the dashboard open {watched:.2%}"


def test_the_task_list_filters_and_pages(admin: Page, client: ThreadedClient, stack: Stack) -> None:
    ids = [client.submit("boom", f"page {n}".encode(), pool="batch") for n in range(3)]
    admin.goto(f"{stack.url}/tasks?pool=batch&type=boom&limit=2")
    rows = admin.locator("#tasks-table tbody tr")
    expect(rows).to_have_count(2)
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.task)") == [ids[2], ids[1]]
    admin.click("a.next")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-task", ids[0])
    expect(admin.locator("a.next")).to_have_count(0)
    # Created in the last 0.6 ms: none of them, by now.
    admin.goto(f"{stack.url}/tasks?pool=batch&type=boom&since_min=0.00001")
    expect(admin.locator("#tasks-table tbody")).to_have_text("No task matches.")
    admin.goto(f"{stack.url}/tasks?pool=batch&type=boom&since_min=10")
    expect(rows).to_have_count(3)
    admin.goto(f"{stack.url}/tasks?state=NOPE")
    expect(admin.locator(".error")).to_have_text("unknown state 'NOPE'")
    for task_id in ids:
        client.cancel(task_id)
