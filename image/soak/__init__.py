"""`invoke soak`: campaigns of power cuts, a full disk and node failover against the built appliance."""
