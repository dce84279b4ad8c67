"""A retraining worker with fake steps, run until killed: the backend process the kill tests kill.

python labelstudio_backend_driver.py STATE_DIR MANIFEST BASE SOURCE_VERSION_DIR WAIT_FILE
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labelstudio_backend_helpers import fake_commands  # noqa: E402

from keras_lossal.labelstudio_backend.retraining import Retrainer  # noqa: E402

if __name__ == "__main__":
    state_dir, manifest, base, source, wait_file = sys.argv[1:]
    Retrainer(state_dir, manifest, base, 1, fake_commands(source, wait_export=wait_file)).start()
    while True:
        time.sleep(1)
