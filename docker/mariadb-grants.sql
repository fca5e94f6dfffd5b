-- What binlog capture (capture.source mysql) needs of its user.
GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO 'cdc'@'%';
