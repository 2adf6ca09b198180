% rebase('layout', c=c, title=title)
<p class="message">{{text}}</p>
% if c.user:
<p><a href="{{c.base}}/">Back to the overview</a></p>
% else:
<p><a href="{{c.base}}/login">Log in</a></p>
% end
