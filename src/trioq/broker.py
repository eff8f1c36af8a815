"""``python -m trioq.broker``: run a trioq broker. See ``--help``."""

from __future__ import annotations

from ._broker import Broker as Broker
from ._broker import main as main
from ._broker_settings import BrokerSettings as BrokerSettings
from ._broker_settings import parse_settings as parse_settings

if __name__ == "__main__":
    raise SystemExit(main())
