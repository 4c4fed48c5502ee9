"""What the bench scripts' Python parts share (lib.sh puts bench/ on PYTHONPATH):
`Api(base, token)` calls the JSON API, `ts` reads the server's timestamps, `row` prints
a result row for bench/run.sh, `wait_run` polls a run until it ends."""
import calendar, json, time, urllib.request


class Api:
    """`api(method, path, body=None, headers=None)`: the decoded JSON answer. A bytes body
    is sent as it is, anything else as JSON."""

    def __init__(self, base, token):
        self.base, self.token = base, token

    def __call__(self, method, path, body=None, headers=None):
        h = {"authorization": f"Bearer {self.token}", "content-type": "application/json"}
        h.update(headers or {})
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, method=method, headers=h, data=data)
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read() or b"null")

    def wait_run(self, project, number, poll=0.01):
        """The run once it is neither queued nor running."""
        while True:
            run = self("GET", f"/api/v1/projects/{project}/runs/{number}")
            if run["status"] not in ("queued", "running"):
                return run
            time.sleep(poll)


def ts(s):
    """Seconds since the epoch of an RFC 3339 UTC timestamp (`…T12:00:00.123456Z`)."""
    secs, _, frac = s.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(secs, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))


def row(*cells):
    """A result row: what, target, measured, reference (same run), ratio."""
    print("ROW\t" + "\t".join(str(c) for c in cells), flush=True)
