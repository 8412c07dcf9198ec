import { createApp } from 'vue';
import '../../style.css'; // the plain page's stylesheet: the three front ends look alike
import TokenStreamChat from './TokenStreamChat.vue';

createApp(TokenStreamChat).mount('#app');
