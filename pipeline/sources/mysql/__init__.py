"""MySQL/MariaDB binlog capture (``capture.source: mysql``)."""
