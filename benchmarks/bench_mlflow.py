"""Training speed with MLflow logging every batch to a slow tracking server, against MLflow
off, in one process run.

    python benchmarks/bench_mlflow.py [--rounds 3] [--epochs 2] [--delay-ms 50] [--small] [--json PATH]

Starts ``mlflow server`` (sqlite store) on this machine behind a proxy that holds every
request ``--delay-ms`` before passing it on, then trains the default experiment with
``trainer.threads=1`` (the server and the proxy get the other core), alternately with
``log.mlflow=true log.batch_metrics=true log.interval=1`` against the proxy and with MLflow
off. Steps per second come from each run's own epoch times (``epoch_metrics.csv``: the
loop and validation, not start-up); the figure is the median over rounds of
on / off (target >= 0.98). It also reports how many batch metrics reached the server.
"""
import argparse
import csv
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slow_proxy(target_port: int, delay_s: float) -> ThreadingHTTPServer:
    """An HTTP proxy to 127.0.0.1:target_port that waits ``delay_s`` before each request."""

    class Handler(BaseHTTPRequestHandler):
        def _forward(self):
            time.sleep(delay_s)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
            conn.request(self.command, self.path, body=body, headers={k: v for k, v in self.headers.items()})
            reply = conn.getresponse()
            data = reply.read()
            self.send_response(reply.status)
            for k, v in reply.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def mlflow_server(folder: Path) -> tuple:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                             "--default-artifact-root", (folder / "artifacts").as_uri(), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("mlflow server did not start")


def steps_per_s(run_dir: Path, args) -> float:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
                          cwd=run_dir.parent, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    with open(run_dir / "epoch_metrics.csv") as f:
        seconds = sum(float(r["epoch_time"]) for r in csv.DictReader(f))
    with open(run_dir / "batch_metrics.csv") as f:
        return sum(1 for _ in csv.DictReader(f)) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--small", action="store_true", help="small glint data (a quick check, no figure to quote)")
    parser.add_argument("--json", help="also write the figures (with machine, command, date) here")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("TRAINFORGE_DATA_DIR", str(tmp / "data"))
        server, port = mlflow_server(tmp)
        proxy = slow_proxy(port, a.delay_ms / 1000)
        uri = f"http://127.0.0.1:{proxy.server_address[1]}"
        common = ["trainer.threads=1", f"trainer.epochs={a.epochs}", "log.progress=false", "log.batch_metrics=true",
                  *(["data.num_samples=160", "data.image_size=32", "data.batch_size=16"] if a.small else [])]
        on = [*common, "log.mlflow=true", "log.interval=1", f"log.mlflow_uri={uri}", "log.mlflow_wait_s=600"]
        try:
            steps_per_s(tmp / "warmup", [*common, "trainer.epochs=1"])  # the data is made here
            ratios, speeds = [], {"on": [], "off": []}
            for r in range(a.rounds):
                order = [("on", on), ("off", common)] if r % 2 == 0 else [("off", common), ("on", on)]
                got = {name: steps_per_s(tmp / f"{name}{r}", args) for name, args in order}
                for name in got:
                    speeds[name].append(got[name])
                ratios.append(got["on"] / got["off"])
                print(f"round {r}: on {got['on']:.2f} steps/s, off {got['off']:.2f} steps/s, "
                      f"ratio {ratios[-1]:.3f}", flush=True)
            from mlflow.tracking import MlflowClient

            client = MlflowClient(f"http://127.0.0.1:{port}")
            runs = client.search_runs([client.get_experiment_by_name("trainforge").experiment_id])
            sent = [len(client.get_metric_history(run.info.run_id, "batch_loss")) for run in runs]
        finally:
            proxy.shutdown()
            server.terminate()
            server.wait(timeout=30)
    figures = {"mlflow_on": {"steps_per_s_median": round(statistics.median(speeds["on"]), 3)},
               "mlflow_off": {"steps_per_s_median": round(statistics.median(speeds["off"]), 3)},
               "ratio": {"on_over_off_median": round(statistics.median(ratios), 3),
                         "rounds": a.rounds, "delay_ms": a.delay_ms,
                         "batch_metrics_sent_per_run": sent}}
    import benchjson

    benchjson.report(figures, a.json)


if __name__ == "__main__":
    main()
