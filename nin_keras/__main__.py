"""``python -m nin_keras`` is ``python -m nin_keras.fit``."""

import sys

from nin_keras.fit import main

sys.exit(main())
