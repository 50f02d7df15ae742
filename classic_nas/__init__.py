"""Classic (multi-trial) NAS: a MobileNet ModelSpace with six skip choices, searched through nnictl."""
