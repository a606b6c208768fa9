"""Models, queue transitions and migrations shared by the web app and workerd."""
