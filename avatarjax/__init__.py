"""avatarjax."""
