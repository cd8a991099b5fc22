from vedit.cli import exit_on_bad_overrides
from vedit.run import main

exit_on_bad_overrides()
main()
