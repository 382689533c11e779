from lifeboat.admin import main

main()
