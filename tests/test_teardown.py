"""A test session stopped by SIGTERM (a CI runner's timeout, `kill`) leaves none of the processes
it started: a small pytest session with this suite's fixtures (conftest.py, loaded as a plugin)
starts a Ray head with the README's 'cluster-start' block (as the session's cluster starts),
an MLflow server and an S3 endpoint, is sent SIGTERM once they are up, and afterwards no process
carries its mark (tests/ray_nodes.py), in one process as the README's command runs it and on
xdist workers. Ctrl-C ends a session the same way (pytest's own
KeyboardInterrupt): conftest.py turns SIGTERM into it."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ray_nodes

ROOT = Path(__file__).resolve().parents[1]

HOLDER = '''
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def torn_down():
    """Set up first, so torn down last: its file says the session's own teardown ran to the end
    (not the controller's stopping of what a worker left)."""
    yield
    Path(os.environ["GOLDNAS_PROBE"] + ".torn-down").write_text("")


def test_holds_the_services(torn_down, readme_shell, mlflow_server, s3):
    # the token a default run leaves in ~/.ray, which the README's head requires
    subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"],
                   env=readme_shell.env, check=True, capture_output=True)
    started = readme_shell.run("cluster-start", timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    Path(os.environ["GOLDNAS_PROBE"]).write_text(os.environ["GOLDNAS_TEST_SESSION"])
    time.sleep(900)
'''


@pytest.mark.services
@pytest.mark.parametrize("workers", ["0", "2"])  # the README's command; the xdist run CONTRIBUTING.md gives
def test_sigterm_to_a_session_leaves_none_of_its_processes(tmp_path, workers):
    (tmp_path / "test_holder.py").write_text(HOLDER)
    probe = tmp_path / "session"
    env = dict(os.environ, GOLDNAS_PROBE=str(probe), PYTHONPATH=str(ROOT / "tests"))
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-c", str(ROOT / "pytest.ini"),
         "-p", "no:cacheprovider", "-n", workers, str(tmp_path / "test_holder.py")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mark = None
    try:
        deadline = time.time() + 600
        while not probe.is_file() and session.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert probe.is_file(), session.communicate(timeout=60)[0][-3000:]
        mark = probe.read_text()
        started = ray_nodes.marked(mark) + ray_nodes.marked(f"{mark}-cluster")
        said = ray_nodes.describe(started)  # Ray's GCS server, the MLflow server and moto's, each among them
        for program in ("gcs_server", "mlflow server", "moto_server"):
            assert any(program in line for line in said), (program, said)
        session.send_signal(signal.SIGTERM)
        console = session.communicate(timeout=300)[0]
        # on xdist workers the services are a worker's ("<controller's mark>-gw0"), and nothing
        # of the controller's or any worker's is left
        assert re.fullmatch(r"gr[0-9a-f]{8}" + (r"-gw\d+" if workers != "0" else ""), mark), mark
        left = ray_nodes.marked(mark.split("-")[0], prefix=True)
        assert left == [], ray_nodes.describe(left) + [console[-3000:]]
        assert session.returncode == 2 and "KeyboardInterrupt" in console, console[-3000:]  # pytest's "interrupted"
        assert not Path(f"/tmp/{mark}").exists()  # the session's RAY_TMPDIR
        assert Path(f"{probe}.torn-down").is_file(), console[-3000:]  # by the fixtures' own teardown
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
        if mark:  # what a broken teardown left (the controller's and every worker's): stopped here
            ray_nodes.stop(mark.split("-")[0], timeout=5, prefix=True)
